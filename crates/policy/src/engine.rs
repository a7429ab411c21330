//! The engine: the platform layer, the per-tenant cache, and decisions.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::role::Decision as CoreDecision;
use bulkhead_core::schema::{ClassSet, Classification};
use bulkhead_core::{Action, Role, Roles, TenantId};
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicySet, Request, RestrictedExpression, Schema, Validator,
};
use parking_lot::RwLock;
use serde::Serialize;

use crate::source::{Layer, Problem, compile};
use crate::{CEDAR_SCHEMA, DEFAULT_POLICIES};

pub use bulkhead_core::role::Decision;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most tenants' policy sets kept built. A tenant not in the cache is rebuilt from its
    /// stored policies on its next request.
    pub cache_capacity: usize,
    /// How long a tenant's cached set is trusted before its stored policies are read again.
    /// Bounds how long a change made on another instance takes to apply here.
    pub ttl: Duration,
    /// Most decisions remembered (see [`Engine::decide`]); 0 evaluates every decision.
    pub decision_cache_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 10_000,
            ttl: Duration::from_secs(5),
            decision_cache_capacity: 65_536,
        }
    }
}

/// Who is asking: the subject and roles of a verified token (or, for a dry run, of the
/// principal being asked about).
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub subject: &'a str,
    pub roles: Roles,
}

/// What an action is done to. The tenant is always the policy set's own.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// The tenant itself (`collection:list`, `policy:*`).
    Tenant,
    Collection(&'a str),
    Record {
        collection: &'a str,
        /// `None` for a record not created yet.
        id: Option<&'a str>,
        owner: Option<&'a str>,
    },
    Field {
        collection: &'a str,
        classification: Classification,
    },
}

/// A decision with the policies that made it, for dry runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Ids of the policies that decided: the permits that allowed, or the forbids that denied.
    /// Empty for a denial because nothing permitted (deny by default).
    pub decided_by: Vec<String>,
    /// Policies that failed to evaluate (an error denies).
    pub errors: Vec<String>,
}

/// The platform layer: the defaults plus the operator's policy files.
#[derive(Debug)]
struct Platform {
    /// Changes whenever the layer does; cached tenant sets built on another are rebuilt.
    generation: u64,
    policies: Vec<Policy>,
    /// Whether one of `policies` names a record literally (see [`names_record`]); worked out
    /// once per layer, not on every tenant set built on it.
    names_records: bool,
    /// `(source name, text)` of each operator file, for display.
    sources: Vec<(String, String)>,
}

/// One tenant's policy set: the platform layer plus that tenant's policies, and nothing else.
#[derive(Debug)]
pub struct TenantPolicies {
    tenant: TenantId,
    /// Names this set's content: two sets share an id only when they hold the same policies
    /// (same platform layer, same tenant version and text). Remembered decisions are keyed
    /// by it, so a changed set never sees a decision made under another.
    id: u64,
    platform_generation: u64,
    /// The tenant's policy version in force, if it has any, and its text.
    version: Option<u64>,
    text: Option<String>,
    /// Whether a policy names a record by its id (`Bulkhead::Record::"…"`): only then is the
    /// record id part of what a decision depends on.
    names_records: bool,
    set: Arc<PolicySet>,
    loaded_at: Instant,
}

impl TenantPolicies {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// When the stored policies this set was built from were read.
    pub fn loaded_at(&self) -> Instant {
        self.loaded_at
    }

    /// Ids of every policy in the set.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }
}

/// Entity type names and uids, parsed once.
#[derive(Debug)]
struct Names {
    user: EntityTypeName,
    tenant: EntityTypeName,
    collection: EntityTypeName,
    record: EntityTypeName,
    field: EntityTypeName,
    roles: [(Role, EntityUid); 3],
    actions: HashMap<Action, EntityUid>,
}

impl Names {
    fn new() -> Result<Self, String> {
        let ty = |s: &str| EntityTypeName::from_str(s).map_err(|e| e.to_string());
        let role = ty("Bulkhead::Role")?;
        let action = ty("Bulkhead::Action")?;
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };
        let roles = [Role::Admin, Role::Member, Role::Reader].map(|r| (r, uid(&role, r.as_str())));
        let actions = Action::ALL
            .into_iter()
            .map(|a| (a, uid(&action, a.as_str())))
            .collect();
        Ok(Self {
            user: ty("Bulkhead::User")?,
            tenant: ty("Bulkhead::Tenant")?,
            collection: ty("Bulkhead::Collection")?,
            record: ty("Bulkhead::Record")?,
            field: ty("Bulkhead::Field")?,
            roles,
            actions,
        })
    }
}

/// The policy decision point.
pub struct Engine {
    validator: Validator,
    authorizer: Authorizer,
    names: Names,
    defaults: Vec<Policy>,
    platform: RwLock<Arc<Platform>>,
    cache: quick_cache::sync::Cache<TenantId, Arc<TenantPolicies>>,
    /// Remembered decisions: key from [`decision_key`], value `true` for allow.
    decisions: Option<quick_cache::sync::Cache<Vec<u8>, bool>>,
    /// Source of set ids.
    next_set: AtomicU64,
    cfg: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// Why the engine could not start (the built-in schema or defaults failed: a build defect).
#[derive(Debug, thiserror::Error)]
#[error("the built-in policy schema or defaults are invalid: {0}")]
pub struct EngineError(String);

impl Engine {
    /// An engine with the default platform policies only.
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        let (schema, _) =
            Schema::from_cedarschema_str(CEDAR_SCHEMA).map_err(|e| EngineError(e.to_string()))?;
        let validator = Validator::new(schema);
        let defaults = compile(
            &validator,
            Layer::Platform,
            "defaults.cedar",
            DEFAULT_POLICIES,
            "default/",
        )
        .map_err(|p| {
            EngineError(
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        Ok(Self {
            validator,
            authorizer: Authorizer::new(),
            names: Names::new().map_err(EngineError)?,
            platform: RwLock::new(Arc::new(Platform {
                generation: 0,
                names_records: any_names_record(&defaults),
                policies: defaults.clone(),
                sources: Vec::new(),
            })),
            defaults,
            cache: quick_cache::sync::Cache::new(cfg.cache_capacity.max(16)),
            decisions: (cfg.decision_cache_capacity > 0)
                .then(|| quick_cache::sync::Cache::new(cfg.decision_cache_capacity)),
            next_set: AtomicU64::new(1),
            cfg,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Validates platform policy files (`(name, text)`), without applying them.
    pub fn check_platform(&self, files: &[(String, String)]) -> Result<Vec<Policy>, Vec<Problem>> {
        let mut policies = self.defaults.clone();
        let mut problems = Vec::new();
        let mut ids: HashSet<String> = policies.iter().map(|p| p.id().to_string()).collect();
        for (name, text) in files {
            match compile(
                &self.validator,
                Layer::Platform,
                name,
                text,
                &format!("platform/{name}/"),
            ) {
                Ok(ps) => {
                    for p in ps {
                        if ids.insert(p.id().to_string()) {
                            policies.push(p);
                        } else {
                            problems.push(Problem {
                                source: name.clone(),
                                line: 0,
                                column: 0,
                                policy: Some(p.id().to_string()),
                                message: "the id is used by another policy".into(),
                            });
                        }
                    }
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(policies)
        } else {
            Err(problems)
        }
    }

    /// Replaces the platform layer with the defaults plus `files`. On any problem the layer in
    /// force stays as it was. Every tenant's cached set is rebuilt on its next request.
    pub fn set_platform(&self, files: Vec<(String, String)>) -> Result<u64, Vec<Problem>> {
        let policies = self.check_platform(&files)?;
        let mut guard = self.platform.write();
        let generation = guard.generation.wrapping_add(1);
        *guard = Arc::new(Platform {
            generation,
            names_records: any_names_record(&policies),
            policies,
            sources: files,
        });
        Ok(generation)
    }

    /// The operator's platform files in force, and the layer's generation.
    pub fn platform_sources(&self) -> (u64, Vec<(String, String)>) {
        let p = self.platform.read();
        (p.generation, p.sources.clone())
    }

    /// Validates a tenant's policy text (forbid only; see the crate docs).
    pub fn check_tenant(&self, text: &str, version: u64) -> Result<Vec<Policy>, Vec<Problem>> {
        compile(
            &self.validator,
            Layer::Tenant,
            "request",
            text,
            &format!("tenant/v{version}/"),
        )
    }

    /// The tenant's cached set, if built on the platform layer in force and fresh.
    pub fn cached(&self, tenant: TenantId) -> Option<Arc<TenantPolicies>> {
        self.cached_if(tenant, |loaded_at| loaded_at.elapsed() < self.cfg.ttl)
    }

    /// The tenant's cached set, if built on the platform layer in force and `fresh` says the
    /// time its stored policies were read (`TenantPolicies::loaded_at`) is recent enough.
    pub fn cached_if(
        &self,
        tenant: TenantId,
        fresh: impl FnOnce(Instant) -> bool,
    ) -> Option<Arc<TenantPolicies>> {
        let generation = self.platform.read().generation;
        self.cache
            .get(&tenant)
            .filter(|t| t.platform_generation == generation && fresh(t.loaded_at))
    }

    /// Builds (and caches) a tenant's set from its stored policy version, if any.
    pub fn load(
        &self,
        tenant: TenantId,
        stored: Option<(u64, &str)>,
    ) -> Result<Arc<TenantPolicies>, Vec<Problem>> {
        self.load_as_of(tenant, stored, Instant::now())
    }

    /// Like [`Engine::load`], for stored policies read at `read_at` (when the read began):
    /// the set counts as loaded then, so a change committed during the read is not missed.
    pub fn load_as_of(
        &self,
        tenant: TenantId,
        stored: Option<(u64, &str)>,
        read_at: Instant,
    ) -> Result<Arc<TenantPolicies>, Vec<Problem>> {
        let platform = self.platform.read().clone();
        let version = stored.map(|(v, _)| v);
        let text = stored.map(|(_, t)| t.to_owned());
        // A reload of the same content (the TTL ran out, nothing changed) reuses the built set
        // and its id, and with it the decisions remembered for it: nothing is parsed again.
        if let Some(old) = self.cache.get(&tenant).filter(|old| {
            old.platform_generation == platform.generation
                && old.version == version
                && old.text == text
        }) {
            let built = Arc::new(TenantPolicies {
                tenant,
                id: old.id,
                platform_generation: old.platform_generation,
                version,
                text,
                names_records: old.names_records,
                set: Arc::clone(&old.set),
                loaded_at: read_at,
            });
            self.cache.insert(tenant, built.clone());
            return Ok(built);
        }
        let mut set = PolicySet::new();
        for p in &platform.policies {
            // Ids are unique by construction (`default/`, `platform/`, `tenant/` prefixes).
            set.add(p.clone())
                .map_err(|e| vec![internal(e.to_string())])?;
        }
        let mut names_records = platform.names_records;
        if let Some((v, text)) = stored {
            let tenant_policies = self.check_tenant(text, v)?;
            names_records = names_records || any_names_record(&tenant_policies);
            for p in tenant_policies {
                set.add(p).map_err(|e| vec![internal(e.to_string())])?;
            }
        }
        let built = Arc::new(TenantPolicies {
            tenant,
            id: self.next_set.fetch_add(1, Ordering::Relaxed),
            platform_generation: platform.generation,
            version,
            text,
            names_records,
            set: Arc::new(set),
            loaded_at: read_at,
        });
        self.cache.insert(tenant, built.clone());
        Ok(built)
    }

    /// Forgets a tenant's cached set (after its policies changed here).
    pub fn invalidate(&self, tenant: TenantId) {
        self.cache.remove(&tenant);
    }

    /// Number of tenants whose sets are cached.
    pub fn cached_tenants(&self) -> usize {
        self.cache.len()
    }

    fn request(
        &self,
        tenant: TenantId,
        who: &Principal<'_>,
        action: Action,
        resource: &Resource<'_>,
    ) -> Option<(Request, Entities)> {
        let n = &self.names;
        let tenant_uid =
            EntityUid::from_type_name_and_id(n.tenant.clone(), EntityId::new(tenant.to_string()));
        let mut parents = HashSet::with_capacity(3);
        let mut role_names = Vec::with_capacity(3);
        let mut entities = Vec::with_capacity(7);
        for (role, uid) in &n.roles {
            if who.roles.contains(*role) {
                parents.insert(uid.clone());
                role_names.push(RestrictedExpression::new_string(role.as_str().to_owned()));
                entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            }
        }
        let principal =
            EntityUid::from_type_name_and_id(n.user.clone(), EntityId::new(who.subject));
        let attrs = HashMap::from([
            (
                "subject".to_owned(),
                RestrictedExpression::new_string(who.subject.to_owned()),
            ),
            (
                "roles".to_owned(),
                RestrictedExpression::new_set(role_names),
            ),
        ]);
        entities.push(Entity::new(principal.clone(), attrs, parents).ok()?);
        entities.push(Entity::new_no_attrs(tenant_uid.clone(), HashSet::new()));
        let collection = |name: &str| {
            let uid = EntityUid::from_type_name_and_id(n.collection.clone(), EntityId::new(name));
            let e = Entity::new(
                uid.clone(),
                HashMap::from([(
                    "name".to_owned(),
                    RestrictedExpression::new_string(name.to_owned()),
                )]),
                HashSet::from([tenant_uid.clone()]),
            )
            .ok();
            (uid, e)
        };
        let resource_uid = match resource {
            Resource::Tenant => tenant_uid.clone(),
            Resource::Collection(name) => {
                let (uid, e) = collection(name);
                entities.push(e?);
                uid
            }
            Resource::Record {
                collection: c,
                id,
                owner,
            } => {
                let (cuid, ce) = collection(c);
                entities.push(ce?);
                let uid = EntityUid::from_type_name_and_id(
                    n.record.clone(),
                    EntityId::new(id.unwrap_or("")),
                );
                let mut attrs = HashMap::with_capacity(2);
                attrs.insert(
                    "collection".to_owned(),
                    RestrictedExpression::new_string((*c).to_owned()),
                );
                if let Some(o) = owner {
                    attrs.insert(
                        "owner".to_owned(),
                        RestrictedExpression::new_string((*o).to_owned()),
                    );
                }
                entities.push(Entity::new(uid.clone(), attrs, HashSet::from([cuid])).ok()?);
                uid
            }
            Resource::Field {
                collection: c,
                classification,
            } => {
                let (cuid, ce) = collection(c);
                entities.push(ce?);
                let uid = EntityUid::from_type_name_and_id(
                    n.field.clone(),
                    EntityId::new(format!("{c}/{}", classification.as_str())),
                );
                let attrs = HashMap::from([
                    (
                        "collection".to_owned(),
                        RestrictedExpression::new_string((*c).to_owned()),
                    ),
                    (
                        "classification".to_owned(),
                        RestrictedExpression::new_string(classification.as_str().to_owned()),
                    ),
                ]);
                entities.push(Entity::new(uid.clone(), attrs, HashSet::from([cuid])).ok()?);
                uid
            }
        };
        let action_uid = n.actions.get(&action)?.clone();
        let request =
            Request::new(principal, action_uid, resource_uid, Context::empty(), None).ok()?;
        let entities = Entities::from_entities(entities, None).ok()?;
        Some((request, entities))
    }

    fn respond(
        &self,
        set: &TenantPolicies,
        who: &Principal<'_>,
        action: Action,
        resource: &Resource<'_>,
    ) -> Option<cedar_policy::Response> {
        let (request, entities) = self.request(set.tenant, who, action, resource)?;
        Some(self.authorizer.is_authorized(&request, &set.set, &entities))
    }

    /// Decides `action` on `resource` for `who` with one tenant's set. Deny unless a permit
    /// matched, no forbid did, and no policy failed to evaluate.
    ///
    /// Decisions are remembered: Cedar is deterministic, and a decision depends only on the
    /// policies (the set's id), the principal (subject and roles), the action and the
    /// resource's attributes (the record id only when a policy names a record), with an
    /// empty context. The key holds all of them in full (no hash stands in for them), so a
    /// remembered decision is the one evaluation would make. Decisions that hit an
    /// evaluation error are not remembered.
    pub fn decide(
        &self,
        set: &TenantPolicies,
        who: &Principal<'_>,
        action: Action,
        resource: &Resource<'_>,
    ) -> CoreDecision {
        let Some(memo) = &self.decisions else {
            return self.evaluate(set, who, action, resource).0;
        };
        let key = decision_key(set, who, action, resource);
        if let Some(allow) = memo.get(&key) {
            return if allow {
                CoreDecision::Allow
            } else {
                CoreDecision::Deny { action }
            };
        }
        let (decision, clean) = self.evaluate(set, who, action, resource);
        if clean {
            memo.insert(key, decision == CoreDecision::Allow);
        }
        decision
    }

    /// Decides without the memory of earlier decisions: the full Cedar evaluation (what
    /// the decision micro-benchmark measures). The flag is false when a policy failed.
    pub fn evaluate(
        &self,
        set: &TenantPolicies,
        who: &Principal<'_>,
        action: Action,
        resource: &Resource<'_>,
    ) -> (CoreDecision, bool) {
        let Some(resp) = self.respond(set, who, action, resource) else {
            return (CoreDecision::Deny { action }, false);
        };
        let errors = resp.diagnostics().errors().count();
        if errors > 0 {
            tracing::warn!(
                tenant = %set.tenant,
                errors,
                action = action.as_str(),
                "a policy failed to evaluate; denied"
            );
        }
        let decision = if resp.decision() == CedarDecision::Allow && errors == 0 {
            CoreDecision::Allow
        } else {
            CoreDecision::Deny { action }
        };
        (decision, errors == 0)
    }

    /// Number of decisions remembered.
    pub fn remembered_decisions(&self) -> u64 {
        self.decisions.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Like [`Engine::decide`], with the policies that decided (for dry runs).
    pub fn explain(
        &self,
        set: &TenantPolicies,
        who: &Principal<'_>,
        action: Action,
        resource: &Resource<'_>,
    ) -> Explanation {
        let Some(resp) = self.respond(set, who, action, resource) else {
            return Explanation {
                decision: "deny",
                decided_by: Vec::new(),
                errors: vec!["the request could not be built".into()],
            };
        };
        let mut decided_by: Vec<String> = resp
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        decided_by.sort();
        let errors: Vec<String> = resp
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let allowed = resp.decision() == CedarDecision::Allow && errors.is_empty();
        Explanation {
            decision: if allowed { "allow" } else { "deny" },
            decided_by,
            errors,
        }
    }

    /// The write actions each of `policies` alone would allow a caller whose only role is
    /// `reader` (for `bulkhead lint`): `(policy id, action)` pairs.
    pub fn reader_writes(&self, policies: &[Policy]) -> Vec<(String, Action)> {
        let reader = Principal {
            subject: "lint-reader",
            roles: Roles::from_slice(&[Role::Reader]).unwrap_or_default(),
        };
        let probe = TenantId::generate();
        let mut out = Vec::new();
        for p in policies {
            let mut set = PolicySet::new();
            if set.add(p.clone()).is_err() {
                continue;
            }
            let one = TenantPolicies {
                tenant: probe,
                id: self.next_set.fetch_add(1, Ordering::Relaxed),
                platform_generation: 0,
                version: None,
                text: None,
                names_records: true,
                set: Arc::new(set),
                loaded_at: Instant::now(),
            };
            for action in Action::ALL.into_iter().filter(|a| a.is_write()) {
                let resources: Vec<Resource<'_>> = match action {
                    Action::ManagePolicies => vec![Resource::Tenant],
                    Action::ManageCollection => vec![Resource::Collection("any")],
                    _ => vec![
                        Resource::Record {
                            collection: "any",
                            id: Some("r"),
                            owner: None,
                        },
                        Resource::Record {
                            collection: "any",
                            id: Some("r"),
                            owner: Some("lint-reader"),
                        },
                        Resource::Record {
                            collection: "any",
                            id: Some("r"),
                            owner: Some("someone-else"),
                        },
                    ],
                };
                if resources
                    .iter()
                    .any(|r| self.decide(&one, &reader, action, r) == CoreDecision::Allow)
                {
                    out.push((p.id().to_string(), action));
                }
            }
        }
        out
    }

    /// The classes among `present` that `who` may see in `collection`.
    pub fn visible_classes(
        &self,
        set: &TenantPolicies,
        who: &Principal<'_>,
        collection: &str,
        present: ClassSet,
    ) -> ClassSet {
        let mut visible = ClassSet::default();
        for c in Classification::ALL {
            if !present.contains(c) {
                continue;
            }
            let r = Resource::Field {
                collection,
                classification: c,
            };
            if self.decide(set, who, Action::ReadField, &r) == CoreDecision::Allow {
                visible.insert(c);
            }
        }
        visible
    }
}

/// The memory key of a decision: every input the decision can depend on, each
/// length-prefixed so no two inputs share a key.
fn decision_key(
    set: &TenantPolicies,
    who: &Principal<'_>,
    action: Action,
    resource: &Resource<'_>,
) -> Vec<u8> {
    fn put(k: &mut Vec<u8>, s: &str) {
        k.extend_from_slice(&(s.len() as u64).to_le_bytes());
        k.extend_from_slice(s.as_bytes());
    }
    let mut k = Vec::with_capacity(96);
    k.extend_from_slice(&set.id.to_le_bytes());
    k.extend_from_slice(set.tenant.as_bytes());
    for (i, role) in [Role::Admin, Role::Member, Role::Reader]
        .into_iter()
        .enumerate()
    {
        if who.roles.contains(role) {
            k.push(u8::try_from(i).unwrap_or(u8::MAX));
        }
    }
    k.push(b'|');
    put(&mut k, action.as_str());
    put(&mut k, who.subject);
    match resource {
        Resource::Tenant => k.push(0),
        Resource::Collection(c) => {
            k.push(1);
            put(&mut k, c);
        }
        Resource::Record {
            collection,
            id,
            owner,
        } => {
            k.push(2);
            put(&mut k, collection);
            match id {
                Some(id) if set.names_records => {
                    k.push(1);
                    put(&mut k, id);
                }
                // `None` and `Some("")` build the same entity.
                None if set.names_records => {
                    k.push(1);
                    put(&mut k, "");
                }
                _ => k.push(0),
            }
            match owner {
                Some(o) => {
                    k.push(1);
                    put(&mut k, o);
                }
                None => k.push(0),
            }
        }
        Resource::Field {
            collection,
            classification,
        } => {
            k.push(3);
            put(&mut k, collection);
            put(&mut k, classification.as_str());
        }
    }
    k
}

/// Whether one of `policies` names a record literally.
fn any_names_record(policies: &[Policy]) -> bool {
    policies.iter().any(|p| names_record(&p.to_json().ok()))
}

/// Whether a policy (as Cedar's JSON form) holds a literal record uid (`{"type":
/// "Bulkhead::Record", "id": …}`), in its scope or its conditions. Conservative: a policy
/// that cannot be read as JSON counts as naming records.
fn names_record(json: &Option<serde_json::Value>) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let is_record_uid = m.contains_key("id")
                    && m.get("type")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|t| t == "Record" || t.ends_with("::Record"));
                is_record_uid || m.values().any(walk)
            }
            serde_json::Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    json.as_ref().is_none_or(walk)
}

fn internal(message: String) -> Problem {
    Problem {
        source: "engine".into(),
        line: 0,
        column: 0,
        policy: None,
        message,
    }
}
