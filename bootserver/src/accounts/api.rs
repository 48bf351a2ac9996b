//! The accounts' part of the admin API (behind its guard: bearer token, Host check, JSON-only
//! changes). Hashes never leave: every answer is an [`Account`].
//!
//! - `GET    /api/users`         every account
//! - `GET    /api/users/{name}`  one
//! - `POST   /api/users`         `{"name","password","role"?,"template"?,"desktop"?}`: 201
//! - `PATCH  /api/users/{name}`  any of `enabled`, `role`, `template` (null: the default),
//!   `desktop`, `password`
//! - `DELETE /api/users/{name}`  (with `Content-Type: application/json`, as every change)

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};

use super::core::{hash_password, validate_new_password, Account, Desktop, Policy, Role};
use super::store::{AccountError, AccountStore, Change};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    role: Role,
    template: Option<String>,
    #[serde(default)]
    desktop: Desktop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    enabled: Option<bool>,
    role: Option<Role>,
    /// Absent: unchanged; `null`: back to the deployment's default.
    #[serde(default, deserialize_with = "present")]
    template: Option<Option<String>>,
    desktop: Option<Desktop>,
    password: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn failed(e: AccountError) -> Response {
    let status = match &e {
        AccountError::Invalid(_) => StatusCode::BAD_REQUEST,
        AccountError::Exists(_) => StatusCode::CONFLICT,
        AccountError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Runs a store job (SQLite, argon2) off the async runtime.
async fn blocking<T: Send + 'static>(job: impl FnOnce() -> Result<T, AccountError> + Send + 'static) -> Result<T, Response> {
    match tokio::task::spawn_blocking(job).await {
        Ok(r) => r.map_err(failed),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("account store job failed: {e}"))),
    }
}

fn answer<T: serde::Serialize>(r: Result<T, Response>) -> Response {
    r.map_or_else(|e| e, |v| Json(v).into_response())
}

async fn list(State(store): State<Arc<AccountStore>>) -> Response {
    answer(blocking(move || store.list()).await)
}

async fn one(State(store): State<Arc<AccountStore>>, Path(name): Path<String>) -> Response {
    answer(blocking(move || store.get(&name)?.ok_or(AccountError::NotFound(name))).await)
}

async fn create(State(store): State<Arc<AccountStore>>, Json(u): Json<NewUser>) -> Response {
    let made = blocking(move || {
        super::core::validate_name(&u.name)?;
        validate_new_password(&u.password)?;
        // A taken name is refused before the hash is paid for.
        if store.get(&u.name)?.is_some() {
            return Err(AccountError::Exists(u.name));
        }
        let policy = Policy { template: u.template, desktop: u.desktop };
        store.add(&u.name, &hash_password(&u.password)?, u.role, &policy)
    })
    .await;
    match made {
        Ok(a) => {
            log::info!("admin: user {} added ({})", a.name, a.role.as_str());
            crate::web::events::emit(crate::web::events::Kind::Users);
            (StatusCode::CREATED, Json(a)).into_response()
        }
        Err(r) => r,
    }
}

async fn patch(State(store): State<Arc<AccountStore>>, Path(name): Path<String>, Json(p): Json<Patch>) -> Response {
    let changed: Result<Account, Response> = blocking(move || {
        let phc = match &p.password {
            Some(pw) => {
                validate_new_password(pw)?;
                if store.get(&name)?.is_none() {
                    return Err(AccountError::NotFound(name));
                }
                Some(hash_password(pw)?)
            }
            None => None,
        };
        let change = Change { enabled: p.enabled, role: p.role, template: p.template, desktop: p.desktop, phc };
        store.update(&name, &change)
    })
    .await;
    if let Ok(a) = &changed {
        log::info!("admin: user {} changed", a.name);
        crate::web::events::emit(crate::web::events::Kind::Users);
    }
    answer(changed)
}

async fn delete(State(store): State<Arc<AccountStore>>, Path(name): Path<String>) -> Response {
    let gone = blocking(move || store.delete(&name).map(|()| name)).await;
    if let Ok(name) = &gone {
        log::info!("admin: user {name} removed");
        crate::web::events::emit(crate::web::events::Kind::Users);
    }
    answer(gone.map(|name| serde_json::json!({ "deleted": name })))
}

pub fn router(store: Arc<AccountStore>) -> Router {
    Router::new()
        .route("/api/users", get(list).post(create))
        .route("/api/users/:name", get(one).patch(patch).delete(delete))
        .with_state(store)
}
