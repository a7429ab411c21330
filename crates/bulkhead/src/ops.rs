//! Operator commands: `bulkhead tenants …` and `bulkhead tokens …`.
//!
//! They talk to a running server over its operator API with the admin token,
//! print a table for people or the server's JSON with `--json` for scripts.
#![allow(clippy::print_stdout, reason = "this module is CLI output")]

use std::fmt;

use anyhow::{Context as _, bail};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{ApiClient, encode};

/// Where the server is and how to authenticate as its operator; shared by the
/// `tenants`, `tokens` and `bench` commands.
#[derive(clap::Args, Clone)]
pub struct Remote {
    /// Bulkhead server URL
    #[arg(
        long,
        env = "BULKHEAD_URL",
        default_value = "http://127.0.0.1:8700",
        global = true
    )]
    pub url: String,

    /// Operator (admin) token
    #[arg(
        long,
        env = "BULKHEAD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

// Hand-written so that the admin token never ends up in a log or a panic message.
impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("json", &self.json)
            .finish()
    }
}

impl Remote {
    /// A client carrying the operator token, or an error saying where to find it.
    pub fn operator_client(&self) -> anyhow::Result<ApiClient> {
        let token = self
            .admin_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .context(
                "no operator token: pass --admin-token or set BULKHEAD_ADMIN_TOKEN \
                 (the server printed it on first start and wrote it to <data-dir>/admin-token)",
            )?;
        Ok(ApiClient::new(&self.url, Some(token))?)
    }
}

/// A tenant's service tier.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The `free` tier
    Free,
    /// The default tier
    Standard,
    /// The `enterprise` tier
    Enterprise,
}

impl Tier {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Standard => "standard",
            Self::Enterprise => "enterprise",
        }
    }
}

/// A role granted by a tenant token.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in the tenant, including collection schemas
    Admin,
    /// Read and write records
    Member,
    /// Read records only
    Reader,
}

impl Role {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Reader => "reader",
        }
    }
}

/// Manage tenants.
#[derive(clap::Subcommand, Debug)]
pub enum TenantsCmd {
    /// Create a tenant and print it
    #[command(after_help = "Example:\n  bulkhead tenants create acme --tier enterprise")]
    Create {
        /// Display name of the tenant
        name: String,
        /// Service tier (the server's default, standard, when absent)
        #[arg(long, value_enum)]
        tier: Option<Tier>,
    },

    /// List tenants, oldest first
    #[command(
        after_help = "Examples:\n  bulkhead tenants list\n  bulkhead tenants list --all --json | jq -r '.items[].id'"
    )]
    List {
        /// How many tenants to ask for per page
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Follow the cursors and list every tenant, not only the first page
        #[arg(long)]
        all: bool,
    },

    /// Show one tenant
    Show {
        /// Tenant id
        id: String,
    },

    /// Suspend a tenant: its tokens stop working until it is resumed; no data is lost
    Suspend {
        /// Tenant id
        id: String,
    },

    /// Resume a suspended tenant
    Resume {
        /// Tenant id
        id: String,
    },

    /// Offboard a tenant: destroy its data keys so that its data can never be read again
    #[command(
        after_help = "This cannot be undone. Example:\n  bulkhead tenants delete 0190f6c2-... --yes"
    )]
    Delete {
        /// Tenant id
        id: String,
        /// Confirm the deletion (required)
        #[arg(long)]
        yes: bool,
    },
}

/// Manage tenant tokens.
#[derive(clap::Subcommand, Debug)]
pub enum TokensCmd {
    /// Mint a token for a user of a tenant; prints the token alone on stdout
    #[command(
        after_help = "Example:\n  TOKEN=$(bulkhead tokens mint --tenant \"$TENANT\" --subject alice --role member --role reader)\n  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8700/v1/collections/notes/records"
    )]
    Mint {
        /// Tenant id
        #[arg(long, value_name = "ID")]
        tenant: String,
        /// Who the token is for (user or service name), carried in the token's `sub` claim
        #[arg(long, value_name = "NAME")]
        subject: String,
        /// Role to grant; repeat for several
        #[arg(long = "role", value_name = "ROLE", value_enum, default_values_t = [Role::Member])]
        roles: Vec<Role>,
        /// Lifetime of the token in seconds
        #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
    },
}

/// Runs a `bulkhead tenants …` command.
pub async fn tenants(remote: &Remote, cmd: TenantsCmd) -> anyhow::Result<()> {
    // Refuse before asking for a token so the safety message comes first.
    if let TenantsCmd::Delete { id, yes: false } = &cmd {
        bail!(
            "refusing to delete tenant `{id}` without --yes: offboarding destroys its data keys and cannot be undone"
        );
    }
    let client = remote.operator_client()?;
    match cmd {
        TenantsCmd::Create { name, tier } => {
            let mut body = json!({ "name": name });
            if let (Some(tier), Some(obj)) = (tier, body.as_object_mut()) {
                obj.insert("tier".into(), Value::from(tier.as_str()));
            }
            let tenant = client
                .post("/v1/tenants", &body)
                .await
                .with_context(|| format!("cannot create tenant `{name}`"))?;
            print_tenants(remote.json, &tenant, std::slice::from_ref(&tenant));
        }
        TenantsCmd::List { limit, all } => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = list_path(limit, cursor.as_deref());
                let page = client.get(&path).await.context("cannot list tenants")?;
                if !all {
                    let page_items = page
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    print_tenants(remote.json, &page, &page_items);
                    if !remote.json
                        && let Some(next) = page.get("next_cursor").and_then(Value::as_str)
                    {
                        eprintln!(
                            "more tenants: pass --all, or the next page starts at cursor `{next}`"
                        );
                    }
                    return Ok(());
                }
                if let Some(page_items) = page.get("items").and_then(Value::as_array) {
                    items.extend(page_items.iter().cloned());
                }
                match page.get("next_cursor").and_then(Value::as_str) {
                    // A server that hands back the same cursor would loop forever.
                    Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
                    _ => break,
                }
            }
            let whole = json!({ "items": items, "next_cursor": null });
            print_tenants(remote.json, &whole, &items);
        }
        TenantsCmd::Show { id } => {
            let tenant = client
                .get(&format!("/v1/tenants/{}", encode(&id)))
                .await
                .with_context(|| format!("cannot show tenant `{id}`"))?;
            print_tenants(remote.json, &tenant, std::slice::from_ref(&tenant));
        }
        TenantsCmd::Suspend { id } => {
            let tenant = set_status(&client, &id, "suspended")
                .await
                .with_context(|| format!("cannot suspend tenant `{id}`"))?;
            print_tenants(remote.json, &tenant, std::slice::from_ref(&tenant));
        }
        TenantsCmd::Resume { id } => {
            let tenant = set_status(&client, &id, "active")
                .await
                .with_context(|| format!("cannot resume tenant `{id}`"))?;
            print_tenants(remote.json, &tenant, std::slice::from_ref(&tenant));
        }
        TenantsCmd::Delete { id, .. } => {
            let answer = client
                .delete(&format!("/v1/tenants/{}", encode(&id)))
                .await
                .with_context(|| format!("cannot delete tenant `{id}`"))?;
            if remote.json {
                let out = if answer.is_null() {
                    json!({ "id": id, "deleted": true })
                } else {
                    answer
                };
                println!("{out}");
            } else {
                println!("deleted tenant `{id}`: its data keys are destroyed");
            }
        }
    }
    Ok(())
}

/// Runs a `bulkhead tokens …` command.
pub async fn tokens(remote: &Remote, cmd: TokensCmd) -> anyhow::Result<()> {
    let client = remote.operator_client()?;
    match cmd {
        TokensCmd::Mint {
            tenant,
            subject,
            roles,
            ttl,
        } => {
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            let body = json!({ "subject": subject, "roles": roles, "ttl_seconds": ttl });
            let answer = client
                .post(&format!("/v1/tenants/{}/tokens", encode(&tenant)), &body)
                .await
                .with_context(|| {
                    format!("cannot mint a token for `{subject}` in tenant `{tenant}`")
                })?;
            if remote.json {
                println!("{answer}");
                return Ok(());
            }
            let token = answer
                .get("token")
                .and_then(Value::as_str)
                .context("the server's answer has no `token`")?;
            println!("{token}");
            let expires = answer
                .get("expires_at")
                .and_then(Value::as_str)
                .unwrap_or("(unknown)");
            eprintln!(
                "token for `{subject}` ({}) in tenant `{tenant}`, expires at {expires}",
                roles.join(", ")
            );
        }
    }
    Ok(())
}

/// `PATCH`es a tenant's status.
async fn set_status(client: &ApiClient, id: &str, status: &str) -> anyhow::Result<Value> {
    Ok(client
        .patch(
            &format!("/v1/tenants/{}", encode(id)),
            &json!({ "status": status }),
        )
        .await?)
}

/// The path of one page of the tenant list.
fn list_path(limit: u32, cursor: Option<&str>) -> String {
    match cursor {
        Some(c) => format!("/v1/tenants?limit={limit}&cursor={}", encode(c)),
        None => format!("/v1/tenants?limit={limit}"),
    }
}

/// Prints `raw` as JSON, or `rows` as a table.
fn print_tenants(json: bool, raw: &Value, rows: &[Value]) {
    if json {
        println!("{raw}");
    } else if rows.is_empty() {
        eprintln!("no tenants");
    } else {
        println!("{}", tenant_table(rows));
    }
}

/// The table of tenants shown to people.
fn tenant_table(rows: &[Value]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["ID", "NAME", "TIER", "STATUS", "CREATED"]);
    for t in rows {
        table.add_row([
            text(t, "id"),
            text(t, "name"),
            text(t, "tier"),
            text(t, "status"),
            created(t),
        ]);
    }
    table
}

/// A field of a JSON object as display text, `-` when absent.
fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `created_at` shortened to the second in UTC, or as sent if it is not RFC 3339.
fn created(v: &Value) -> String {
    let raw = text(v, "created_at");
    let Ok(at) = OffsetDateTime::parse(&raw, &Rfc3339) else {
        return raw;
    };
    let at = at.to_offset(time::UtcOffset::UTC);
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    at.format(&format).unwrap_or(raw)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    /// How `main.rs` is expected to wire these commands.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Tenants {
            #[command(flatten)]
            remote: Remote,
            #[command(subcommand)]
            cmd: TenantsCmd,
        },
        Tokens {
            #[command(flatten)]
            remote: Remote,
            #[command(subcommand)]
            cmd: TokensCmd,
        },
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("bulkhead").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let Cmd::Tenants { remote, cmd } = parse(&[
            "tenants",
            "list",
            "--json",
            "--url",
            "http://h:1",
            "--admin-token",
            "t",
        ])
        .cmd
        else {
            panic!("wrong command");
        };
        assert!(remote.json);
        assert_eq!(remote.url, "http://h:1");
        assert_eq!(remote.admin_token.as_deref(), Some("t"));
        assert!(matches!(
            cmd,
            TenantsCmd::List {
                limit: 50,
                all: false
            }
        ));
    }

    #[test]
    fn mint_defaults_to_member_for_an_hour() {
        let Cmd::Tokens {
            cmd: TokensCmd::Mint { roles, ttl, .. },
            ..
        } = parse(&["tokens", "mint", "--tenant", "t1", "--subject", "alice"]).cmd
        else {
            panic!("wrong command");
        };
        assert_eq!(roles, [Role::Member]);
        assert_eq!(ttl, 3600);
        let Cmd::Tokens {
            cmd: TokensCmd::Mint { roles, .. },
            ..
        } = parse(&[
            "tokens",
            "mint",
            "--tenant",
            "t1",
            "--subject",
            "a",
            "--role",
            "admin",
            "--role",
            "reader",
        ])
        .cmd
        else {
            panic!("wrong command");
        };
        assert_eq!(roles, [Role::Admin, Role::Reader]);
    }

    #[tokio::test]
    async fn delete_without_yes_is_refused() {
        let remote = Remote {
            url: "http://127.0.0.1:1".into(),
            admin_token: Some("t".into()),
            json: false,
        };
        let err = tenants(
            &remote,
            TenantsCmd::Delete {
                id: "abc".into(),
                yes: false,
            },
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("refusing to delete tenant `abc` without --yes"),
            "{err}"
        );
    }

    #[test]
    fn missing_token_says_where_to_find_it() {
        let remote = Remote {
            url: "http://127.0.0.1:8700".into(),
            admin_token: None,
            json: false,
        };
        let err = remote.operator_client().unwrap_err().to_string();
        assert!(
            err.starts_with("no operator token: pass --admin-token or set BULKHEAD_ADMIN_TOKEN"),
            "{err}"
        );
        assert!(err.contains("<data-dir>/admin-token"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_admin_token() {
        let remote = Remote {
            url: "http://h:1".into(),
            admin_token: Some("s3cret".into()),
            json: false,
        };
        assert!(!format!("{remote:?}").contains("s3cret"));
    }

    #[test]
    fn list_path_encodes_the_cursor() {
        assert_eq!(list_path(50, None), "/v1/tenants?limit=50");
        assert_eq!(
            list_path(2, Some("a+b/c=")),
            "/v1/tenants?limit=2&cursor=a%2Bb%2Fc%3D"
        );
    }

    #[test]
    fn table_shows_tenants_and_tolerates_missing_fields() {
        let rows = [
            json!({"id":"t1","name":"acme","tier":"free","status":"active","created_at":"2026-05-01T12:00:00.123456+02:00"}),
            json!({"id":"t2","name":"globex"}),
        ];
        let shown = tenant_table(&rows).to_string();
        for needle in [
            "ID",
            "CREATED",
            "acme",
            "free",
            "active",
            "2026-05-01 10:00:00Z",
            "globex",
            "-",
        ] {
            assert!(shown.contains(needle), "{needle} missing from\n{shown}");
        }
        assert_eq!(created(&json!({"created_at": "yesterday"})), "yesterday");
    }
}
