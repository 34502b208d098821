//! The admin API's operations: each maps JSON to the request of one `identity::manage`
//! function (the one the CLI calls) and its result back to JSON, with an OpenAPI description.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::problem::{ApiJson, ApiPath, ApiQuery, ApiResult, Errors, Problem};
use super::AdminState;
use crate::config::HumanDuration;
use crate::events::query::{Arrival, ArrivalFilter, EventFilter, EventView};
use crate::identity::audit::{self, Actor};
use crate::identity::bans::Ban;
use crate::identity::expectations::{Expectation, WindowStatus};
use crate::identity::manage::views::{AccountView, FolderView, KeyView, PgpKeyView};
use crate::identity::manage::{
    parse_time, AccountChanges, FolderSpec, KeyInput, NewAccount, PasswordChoice, ReplayRequest,
};

type S = State<Arc<AdminState>>;

/// Most items a list answers with at once.
pub const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

fn page_limit(limit: Option<i64>) -> ApiResult<i64> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Problem::invalid(format!(
            "limit {n} is out of range: give 1 to {MAX_PAGE}"
        ))),
    }
}

fn time(s: &Option<String>) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    Ok(s.as_deref().map(parse_time).transpose()?)
}

fn duration(s: &Option<String>, what: &str) -> ApiResult<Option<std::time::Duration>> {
    s.as_deref()
        .map(|d| {
            d.parse::<HumanDuration>()
                .map(|h| h.0)
                .map_err(|e| Problem::new(422, "invalid-duration", format!("{what}: {e}")))
        })
        .transpose()
}

fn comma(list: &Option<Vec<String>>) -> Option<String> {
    list.as_ref().map(|l| l.join(","))
}

/// A folder's client path from one path segment: `inbound` or `%2Finbound` is `/inbound`.
fn folder_path(segment: &str) -> String {
    if segment.starts_with('/') {
        segment.to_string()
    } else {
        format!("/{segment}")
    }
}

// ---------------------------------------------------------------------------------- accounts

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountsQuery {
    /// Accounts per page (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// A page of accounts, by username.
#[derive(Serialize, ToSchema)]
pub struct AccountsPage {
    items: Vec<AccountView>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

/// A new account. Without `password` or `generate_password` it logs in with its keys only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit.
    username: String,
    /// `s3://bucket/prefix/`, `file:///absolute/dir/` or a path relative to
    /// `storage.default_home` (default: `storage.default_home` + username).
    #[serde(default)]
    home: Option<String>,
    /// A password to set (kept only as an argon2id hash).
    #[serde(default)]
    password: Option<String>,
    /// Generate a 24-character password, returned once in the answer.
    #[serde(default)]
    generate_password: bool,
    /// OpenSSH public key lines (authorized_keys format, no options).
    #[serde(default)]
    ssh_keys: Vec<String>,
    /// CIDRs or addresses it may log in from (default: anywhere).
    #[serde(default)]
    allowed_ips: Vec<String>,
    /// Of list, upload, download, overwrite, delete, rename, mkdir (default: list, upload,
    /// overwrite, rename, mkdir).
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// Create it disabled with false (default true).
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedAccount {
    account: AccountView,
    /// The generated password, shown this once (null unless `generate_password`).
    password: Option<String>,
}

fn password_choice(password: Option<String>, generate: bool) -> ApiResult<PasswordChoice> {
    match (password, generate) {
        (Some(_), true) => Err(Problem::new(
            422,
            "invalid-password",
            "give a password or generate one, not both",
        )),
        (Some(p), false) => Ok(PasswordChoice::Given(SecretString::from(p))),
        (None, true) => Ok(PasswordChoice::Generate),
        (None, false) => Ok(PasswordChoice::None),
    }
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(AccountsQuery),
    responses((status = 200, description = "Accounts by username", body = AccountsPage), Errors),
    security(("token" = [])))]
async fn list_accounts(
    State(s): S,
    ApiQuery(q): ApiQuery<AccountsQuery>,
) -> ApiResult<Json<AccountsPage>> {
    let limit = page_limit(q.limit)?;
    let accounts = s.manager.accounts_page(q.after.as_deref(), limit).await?;
    let next = (accounts.len() as i64 == limit)
        .then(|| accounts.last().map(|a| a.username.clone()))
        .flatten();
    Ok(Json(AccountsPage {
        items: accounts.iter().map(|a| AccountView::new(a, None)).collect(),
        next,
    }))
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccount,
    responses((status = 201, description = "Created", body = CreatedAccount), Errors),
    security(("token" = [])))]
async fn create_account(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiJson(b): ApiJson<CreateAccount>,
) -> ApiResult<(StatusCode, Json<CreatedAccount>)> {
    let password = password_choice(b.password, b.generate_password)?;
    let keys = if b.ssh_keys.is_empty() {
        Vec::new()
    } else {
        vec![KeyInput::new("ssh_keys", b.ssh_keys.join("\n"))]
    };
    let created = s
        .manager
        .create_account(
            NewAccount {
                username: b.username,
                home: b.home,
                password,
                keys,
                allow_ip: b.allowed_ips,
                permissions: comma(&b.permissions),
                disabled: !b.enabled.unwrap_or(true),
            },
            &actor,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAccount {
            account: AccountView::new(&created.account, Some(&created.keys)),
            password: created.password.map(|p| p.expose_secret().to_string()),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/accounts/{username}", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 200, description = "The account and its SSH keys", body = AccountView), Errors),
    security(("token" = [])))]
async fn get_account(State(s): S, ApiPath(name): ApiPath<String>) -> ApiResult<Json<AccountView>> {
    let (account, keys) = s.manager.account(&name).await?;
    Ok(Json(AccountView::new(&account, Some(&keys))))
}

/// Changes to an account; what is left out stays as it is (`wharf user set`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    #[serde(default)]
    home: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// Replaces the allowed addresses (an empty list: anywhere).
    #[serde(default)]
    allowed_ips: Option<Vec<String>>,
    /// For an account without folders: decrypt PGP arrivals into this client path.
    #[serde(default)]
    decrypt_to: Option<String>,
    /// With `decrypt_to`: decrypt only files signed by one of the account's PGP keys.
    #[serde(default)]
    require_signature: bool,
    /// Stop decrypting the account's arrivals.
    #[serde(default)]
    no_decrypt: bool,
    /// For an account without folders: `allow`, `flag` or `refuse`.
    #[serde(default)]
    duplicates: Option<String>,
    /// How far back an earlier arrival counts for `duplicates` (`31d`).
    #[serde(default)]
    duplicate_window: Option<String>,
    /// For an account without folders: scan its uploads (true) or not (false).
    #[serde(default)]
    scan: Option<bool>,
}

#[utoipa::path(patch, path = "/v1/accounts/{username}", tag = "accounts",
    params(("username" = String, Path)), request_body = UpdateAccount,
    responses((status = 200, description = "The account as changed", body = AccountView), Errors),
    security(("token" = [])))]
async fn update_account(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<UpdateAccount>,
) -> ApiResult<Json<AccountView>> {
    let changes = AccountChanges {
        home: b.home,
        permissions: comma(&b.permissions),
        clear_allow_ip: b.allowed_ips.is_some(),
        allow_ip: b.allowed_ips.unwrap_or_default(),
        decrypt_to: b.decrypt_to,
        require_signature: b.require_signature,
        no_decrypt: b.no_decrypt,
        duplicates: b.duplicates,
        duplicate_window: duration(&b.duplicate_window, "duplicate_window")?,
        scan: b.scan,
    };
    let account = s.manager.update_account(&name, changes, &actor).await?;
    Ok(Json(AccountView::new(&account, None)))
}

#[utoipa::path(delete, path = "/v1/accounts/{username}", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 204, description = "Deleted with its keys (its files stay in storage)"), Errors),
    security(("token" = [])))]
async fn delete_account(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.manager.delete_account(&name, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/accounts/{username}/enable", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 200, description = "It may log in", body = AccountView), Errors),
    security(("token" = [])))]
async fn enable_account(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AccountView>> {
    let a = s.manager.set_enabled(&name, true, &actor).await?;
    Ok(Json(AccountView::new(&a, None)))
}

#[utoipa::path(post, path = "/v1/accounts/{username}/disable", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 200, description = "Its logins are refused", body = AccountView), Errors),
    security(("token" = [])))]
async fn disable_account(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AccountView>> {
    let a = s.manager.set_enabled(&name, false, &actor).await?;
    Ok(Json(AccountView::new(&a, None)))
}

/// A new password: given, or generated (`wharf user passwd`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    generate: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PasswordSet {
    /// The generated password, shown this once (null when one was given).
    password: Option<String>,
}

#[utoipa::path(post, path = "/v1/accounts/{username}/password", tag = "accounts",
    params(("username" = String, Path)), request_body = SetPassword,
    responses((status = 200, description = "Changed", body = PasswordSet), Errors),
    security(("token" = [])))]
async fn set_password(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<SetPassword>,
) -> ApiResult<Json<PasswordSet>> {
    let choice = password_choice(b.password, b.generate)?;
    let generated = s.manager.set_password(&name, choice, &actor).await?;
    Ok(Json(PasswordSet {
        password: generated.map(|p| p.expose_secret().to_string()),
    }))
}

// -------------------------------------------------------------------------------- SSH keys

#[utoipa::path(get, path = "/v1/accounts/{username}/keys", tag = "keys",
    params(("username" = String, Path)),
    responses((status = 200, description = "Its SSH keys", body = Vec<KeyView>), Errors),
    security(("token" = [])))]
async fn list_keys(State(s): S, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Vec<KeyView>>> {
    let keys = s.manager.keys(&name).await?;
    Ok(Json(keys.iter().map(KeyView::new).collect()))
}

/// OpenSSH public key lines.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddKeys {
    /// One or more `authorized_keys` lines (ed25519, ecdsa, RSA of 2048 bits or more; no
    /// options).
    keys: String,
}

#[utoipa::path(post, path = "/v1/accounts/{username}/keys", tag = "keys",
    params(("username" = String, Path)), request_body = AddKeys,
    responses((status = 201, description = "Added (all or none)", body = Vec<KeyView>), Errors),
    security(("token" = [])))]
async fn add_keys(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<AddKeys>,
) -> ApiResult<(StatusCode, Json<Vec<KeyView>>)> {
    let keys = s
        .manager
        .add_keys(&name, &KeyInput::new("keys", b.keys), &actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(keys.iter().map(KeyView::new).collect()),
    ))
}

#[utoipa::path(delete, path = "/v1/accounts/{username}/keys/{fingerprint}", tag = "keys",
    params(("username" = String, Path),
        ("fingerprint" = String, Path, description = "SHA256:… as ssh-keygen -lf prints it, percent-encoded")),
    responses((status = 204, description = "Removed"), Errors),
    security(("token" = [])))]
async fn remove_key(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath((name, fingerprint)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    s.manager.remove_key(&name, &fingerprint, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --------------------------------------------------------------------------------- folders

#[utoipa::path(get, path = "/v1/accounts/{username}/folders", tag = "folders",
    params(("username" = String, Path)),
    responses((status = 200, description = "Its folders", body = Vec<FolderView>), Errors),
    security(("token" = [])))]
async fn list_folders(
    State(s): S,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<FolderView>>> {
    let a = s.manager.folders(&name).await?;
    Ok(Json(a.folders.iter().map(FolderView::new).collect()))
}

/// A folder (`wharf user dir add`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFolder {
    /// The client path (`/inbound`).
    path: String,
    /// `s3://bucket/prefix/`, `file:///absolute/dir/` or a path relative to
    /// `storage.default_home`.
    location: String,
    /// Default: the account's.
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// Globs on the file name; when any, a name must match one.
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    /// Largest upload accepted, in bytes.
    #[serde(default)]
    max_size: Option<u64>,
    #[serde(default)]
    no_reuse_names: bool,
    /// Receipt path, `{name}` standing for the file's name.
    #[serde(default)]
    receipt: Option<String>,
    #[serde(default)]
    decrypt_to: Option<String>,
    #[serde(default)]
    require_signature: bool,
    /// `allow`, `flag` or `refuse`.
    #[serde(default)]
    duplicates: Option<String>,
    /// `31d`.
    #[serde(default)]
    duplicate_window: Option<String>,
    #[serde(default)]
    scan: Option<bool>,
}

#[utoipa::path(post, path = "/v1/accounts/{username}/folders", tag = "folders",
    params(("username" = String, Path)), request_body = AddFolder,
    responses((status = 201, description = "Added", body = FolderView), Errors),
    security(("token" = [])))]
async fn add_folder(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<AddFolder>,
) -> ApiResult<(StatusCode, Json<FolderView>)> {
    if b.require_signature && b.decrypt_to.is_none() {
        return Err(Problem::new(
            422,
            "invalid-decrypt-target",
            "require_signature needs decrypt_to (where files are decrypted)",
        ));
    }
    let spec = FolderSpec {
        path: b.path,
        location: b.location,
        permissions: comma(&b.permissions),
        allow: comma(&b.allow),
        deny: comma(&b.deny),
        max_size: b.max_size,
        no_reuse_names: b.no_reuse_names,
        receipt: b.receipt,
        decrypt_to: b.decrypt_to,
        require_signature: b.require_signature,
        duplicates: b.duplicates,
        duplicate_window: duration(&b.duplicate_window, "duplicate_window")?,
        scan: b.scan,
    };
    let folder = s.manager.add_folder(&name, spec, &actor).await?;
    Ok((StatusCode::CREATED, Json(FolderView::new(&folder))))
}

#[utoipa::path(delete, path = "/v1/accounts/{username}/folders/{path}", tag = "folders",
    params(("username" = String, Path),
        ("path" = String, Path, description = "The folder's client path, percent-encoded (`inbound` or `%2Freports%2Fdaily`)")),
    responses((status = 204, description = "Removed (its files stay in storage)"), Errors),
    security(("token" = [])))]
async fn remove_folder(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath((name, path)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    s.manager
        .remove_folder(&name, &folder_path(&path), &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// -------------------------------------------------------------------------------- PGP keys

#[utoipa::path(get, path = "/v1/accounts/{username}/pgp-keys", tag = "pgp",
    params(("username" = String, Path)),
    responses((status = 200, description = "The partner's PGP signing keys", body = Vec<PgpKeyView>), Errors),
    security(("token" = [])))]
async fn list_pgp_keys(
    State(s): S,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<PgpKeyView>>> {
    let keys = s.manager.pgp_keys(&name).await?;
    Ok(Json(keys.iter().map(PgpKeyView::new).collect()))
}

/// A partner's OpenPGP public key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPgpKey {
    /// ASCII-armored, as `gpg --export --armor` writes it.
    key: String,
}

#[utoipa::path(post, path = "/v1/accounts/{username}/pgp-keys", tag = "pgp",
    params(("username" = String, Path)), request_body = AddPgpKey,
    responses((status = 201, description = "Added", body = PgpKeyView), Errors),
    security(("token" = [])))]
async fn add_pgp_key(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<AddPgpKey>,
) -> ApiResult<(StatusCode, Json<PgpKeyView>)> {
    let key = s
        .manager
        .add_pgp_key(&name, &KeyInput::new("key", b.key), &actor)
        .await?;
    Ok((StatusCode::CREATED, Json(PgpKeyView::new(&key))))
}

#[utoipa::path(delete, path = "/v1/accounts/{username}/pgp-keys/{fingerprint}", tag = "pgp",
    params(("username" = String, Path), ("fingerprint" = String, Path)),
    responses((status = 204, description = "Removed"), Errors),
    security(("token" = [])))]
async fn remove_pgp_key(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath((name, fingerprint)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    s.manager
        .remove_pgp_key(&name, &fingerprint, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------------ bans

#[utoipa::path(get, path = "/v1/bans", tag = "bans",
    responses((status = 200, description = "Addresses banned now", body = Vec<Ban>), Errors),
    security(("token" = [])))]
async fn list_bans(State(s): S) -> ApiResult<Json<Vec<Ban>>> {
    Ok(Json(s.manager.bans().await?))
}

#[utoipa::path(delete, path = "/v1/bans/{address}", tag = "bans",
    params(("address" = String, Path)),
    responses((status = 204, description = "Lifted (every instance notices within seconds)"), Errors),
    security(("token" = [])))]
async fn lift_ban(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(address): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.manager.lift_ban(&address, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------- expectations

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpectationsQuery {
    /// Only this account's.
    user: Option<String>,
}

#[utoipa::path(get, path = "/v1/expectations", tag = "expectations", params(ExpectationsQuery),
    responses((status = 200, description = "Expectations by name", body = Vec<Expectation>), Errors),
    security(("token" = [])))]
async fn list_expectations(
    State(s): S,
    ApiQuery(q): ApiQuery<ExpectationsQuery>,
) -> ApiResult<Json<Vec<Expectation>>> {
    Ok(Json(s.manager.expectations(q.user.as_deref()).await?))
}

/// An expected arrival (`wharf expect add`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddExpectation {
    name: String,
    /// The account the file comes from.
    user: String,
    /// Only files in this folder (client path) count.
    #[serde(default)]
    folder: Option<String>,
    /// Glob on the file name, matched whatever the case.
    pattern: String,
    /// Cron (minute hour day month weekday, optional leading second) in `timezone`.
    schedule: String,
    /// IANA time zone (`Europe/Amsterdam`).
    timezone: String,
    /// Wall-clock time after the window opens by which the file is due (`6h`).
    deadline: String,
    /// How long after the deadline a late file still meets the window (`2h`, default 0).
    #[serde(default)]
    grace: Option<String>,
    /// Files needed to meet a window (default 1).
    #[serde(default)]
    min_files: Option<u32>,
    /// Smallest file that counts, in bytes (default 0).
    #[serde(default)]
    min_bytes: Option<u64>,
}

#[utoipa::path(post, path = "/v1/expectations", tag = "expectations", request_body = AddExpectation,
    responses((status = 201, description = "Added", body = Expectation), Errors),
    security(("token" = [])))]
async fn add_expectation(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiJson(b): ApiJson<AddExpectation>,
) -> ApiResult<(StatusCode, Json<Expectation>)> {
    let deadline = duration(&Some(b.deadline), "deadline")?.unwrap_or_default();
    let grace = duration(&b.grace, "grace")?.unwrap_or_default();
    let e = Expectation {
        name: b.name,
        username: b.user,
        folder: b.folder,
        pattern: b.pattern,
        schedule: b.schedule,
        timezone: b.timezone,
        deadline,
        grace,
        min_files: b.min_files.unwrap_or(1),
        min_bytes: b.min_bytes.unwrap_or(0),
        created_us: 0,
        windows_until_us: 0,
    };
    s.manager.add_expectation(&e, &actor).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowsQuery {
    /// Most recent windows (1-1000, default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/expectations/{name}/windows", tag = "expectations",
    params(("name" = String, Path), WindowsQuery),
    responses((status = 200, description = "Recent windows, newest first", body = Vec<WindowStatus>), Errors),
    security(("token" = [])))]
async fn expectation_windows(
    State(s): S,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<WindowsQuery>,
) -> ApiResult<Json<Vec<WindowStatus>>> {
    let limit = page_limit(Some(q.limit.unwrap_or(10)))?;
    Ok(Json(
        s.manager.expectation_status(Some(&name), limit).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/expectations/{name}", tag = "expectations",
    params(("name" = String, Path)),
    responses((status = 204, description = "Removed with its windows"), Errors),
    security(("token" = [])))]
async fn remove_expectation(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.manager.remove_expectation(&name, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------- events

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events some sink has not received yet.
    pending: Option<bool>,
    /// Recorded at or after (RFC 3339).
    since: Option<String>,
    /// Recorded before (RFC 3339).
    until: Option<String>,
    user: Option<String>,
    /// The event type (`wharf.upload.completed`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    before: Option<i64>,
}

/// Events, newest first.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    items: Vec<EventView>,
    /// Pass as `before` for the next (older) page; null on the last.
    next: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "Events with their deliveries", body = EventsPage), Errors),
    security(("token" = [])))]
async fn list_events(
    State(s): S,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsPage>> {
    let limit = page_limit(q.limit)?;
    let filter = EventFilter {
        pending: q.pending.unwrap_or(false),
        since: time(&q.since)?,
        until: time(&q.until)?,
        username: q.user,
        kind: q.kind,
        before: q.before,
    };
    let events = s.manager.events(&filter, limit).await?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|(seq, _)| *seq))
        .flatten();
    Ok(Json(EventsPage {
        items: events.into_iter().map(|(_, e)| e).collect(),
        next,
    }))
}

/// Events to deliver again: one by `id`, or every one `since` a time.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    #[serde(default)]
    id: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    since: Option<String>,
    /// Only to this sink (default: every configured sink).
    #[serde(default)]
    sink: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries queued again.
    queued: u64,
    sinks: Vec<String>,
}

#[utoipa::path(post, path = "/v1/events/replay", tag = "events", request_body = Replay,
    responses((status = 200, description = "Queued; running servers deliver within a second", body = Replayed), Errors),
    security(("token" = [])))]
async fn replay(
    State(s): S,
    Extension(actor): Extension<Actor>,
    ApiJson(b): ApiJson<Replay>,
) -> ApiResult<Json<Replayed>> {
    if b.id.is_some() == b.since.is_some() {
        return Err(Problem::invalid("give either id or since"));
    }
    let (queued, sinks) = s
        .manager
        .replay(
            &ReplayRequest {
                id: b.id,
                since: b.since,
                sink: b.sink,
            },
            &actor,
        )
        .await?;
    Ok(Json(Replayed { queued, sinks }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArrivalsQuery {
    user: Option<String>,
    /// The folder (client path) it arrived in, or below.
    folder: Option<String>,
    /// Glob on the file name, matched whatever the case (`settlement_*.csv`).
    pattern: Option<String>,
    /// Arrived at or after (RFC 3339).
    since: Option<String>,
    /// Arrived before (RFC 3339).
    until: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    before: Option<i64>,
}

/// Arrivals, newest first.
#[derive(Serialize, ToSchema)]
pub struct ArrivalsPage {
    items: Vec<Arrival>,
    /// Pass as `before` to go on (older ones may match); null when there are no more.
    next: Option<i64>,
}

#[utoipa::path(get, path = "/v1/arrivals", tag = "events", params(ArrivalsQuery),
    responses((status = 200, description = "Files that arrived (while their events are kept)", body = ArrivalsPage), Errors),
    security(("token" = [])))]
async fn list_arrivals(
    State(s): S,
    ApiQuery(q): ApiQuery<ArrivalsQuery>,
) -> ApiResult<Json<ArrivalsPage>> {
    let limit = page_limit(q.limit)?;
    let filter = ArrivalFilter {
        username: q.user,
        folder: q.folder,
        pattern: q.pattern,
        since: time(&q.since)?,
        until: time(&q.until)?,
        before: q.before,
    };
    let (items, next) = s.manager.arrivals(&filter, limit).await?;
    Ok(Json(ArrivalsPage { items, next }))
}

// ------------------------------------------------------------------------ host keys, audit

/// One of the server's SSH host keys.
#[derive(Serialize, ToSchema)]
pub struct HostKey {
    pub algorithm: String,
    /// `SHA256:…`, what partners see on first connect.
    pub fingerprint: String,
}

#[utoipa::path(get, path = "/v1/host-keys", tag = "host-keys",
    responses((status = 200, description = "The SSH host keys' fingerprints", body = Vec<HostKey>), Errors),
    security(("token" = [])))]
async fn host_keys(State(s): S) -> Json<Vec<HostKey>> {
    Json(
        s.host_keys
            .iter()
            .map(|(a, f)| HostKey {
                algorithm: a.clone(),
                fingerprint: f.clone(),
            })
            .collect(),
    )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Changes at or after (RFC 3339).
    since: Option<String>,
    /// Only this actor's (`cli:USER@HOST`, `token:NAME`, `server:HOST`).
    actor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    after: Option<i64>,
}

/// Audit records, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    items: Vec<audit::Row>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "The audit trail", body = AuditPage), Errors),
    security(("token" = [])))]
async fn list_audit(State(s): S, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    let limit = page_limit(q.limit)?;
    let filter = audit::Filter {
        since: time(&q.since)?,
        actor: q.actor,
        after: q.after,
    };
    let items = s.manager.audit(&filter, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage { items, next }))
}

/// Every operation, with its OpenAPI description.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<AdminState>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list_accounts, create_account))
        .routes(routes!(get_account, update_account, delete_account))
        .routes(routes!(enable_account))
        .routes(routes!(disable_account))
        .routes(routes!(set_password))
        .routes(routes!(list_keys, add_keys))
        .routes(routes!(remove_key))
        .routes(routes!(list_folders, add_folder))
        .routes(routes!(remove_folder))
        .routes(routes!(list_pgp_keys, add_pgp_key))
        .routes(routes!(remove_pgp_key))
        .routes(routes!(list_bans))
        .routes(routes!(lift_ban))
        .routes(routes!(list_expectations, add_expectation))
        .routes(routes!(expectation_windows))
        .routes(routes!(remove_expectation))
        .routes(routes!(list_events))
        .routes(routes!(replay))
        .routes(routes!(list_arrivals))
        .routes(routes!(host_keys))
        .routes(routes!(list_audit))
}
