//! Who is using the console, and proof that a change comes from the console's own pages.
//!
//! Signing in: with `--api-tokens`, the sign-in form takes an API token and, when it is one, keeps
//! it in the `flotilla_session` cookie (HttpOnly, SameSite=Strict, Secure when the API is served
//! over TLS). Every request is then authenticated exactly as a bearer token is, on whichever
//! process answers (no session state to share), and removing the token from the file signs its
//! sessions out. Without tokens the console is open, as the API is.
//!
//! CSRF: every form carries the value of the `flotilla_csrf` cookie (random, SameSite=Strict), and
//! a change is refused unless the two match and the request's `Origin`, when sent, is this
//! server. A page on another site can neither read the cookie nor make the browser send it.

use super::page::{Console, Ctx, PageError, PageResult, Section, layout, see_other};
use crate::api::auth::required_role;
use crate::ops::{Caller, Role};
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use maud::{Markup, html};
use std::collections::HashMap;
use tracing::info;

const SESSION: &str = "flotilla_session";
const CSRF: &str = "flotilla_csrf";
/// How long a sign-in lasts.
const SESSION_HOURS: i64 = 12;

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn set_cookie(response: &mut Response, cookie: Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&cookie.encoded().to_string()) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie<'a>(name: &'a str, value: String, secure: bool) -> Cookie<'a> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

/// Paths open to everyone: the sign-in page and the assets.
fn public(path: &str) -> bool {
    path == "/signin" || path.starts_with("/assets/")
}

/// Middleware over every console route: finds the caller (sending a signed-out browser to the
/// sign-in page), and gives each browser its CSRF token.
pub async fn gate(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let csrf_cookie = cookie_value(req.headers(), CSRF).filter(|v| v.len() == 32);
    let csrf = csrf_cookie
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let caller = match &c.tokens {
        None => Some(Caller::anonymous()),
        Some(tokens) => {
            cookie_value(req.headers(), SESSION).and_then(|t| tokens.caller_of_token(&t).cloned())
        }
    };
    let signed_in = c.tokens.is_some();
    let mut response = match caller {
        Some(caller) => {
            req.extensions_mut().insert(Ctx {
                caller,
                csrf: csrf.clone(),
                signed_in,
            });
            if req.method() == Method::GET || req.method() == Method::HEAD {
                next.run(req).await
            } else {
                // As in the API: a change runs to its end in its own task, so a browser that
                // goes away cannot cut it off between its parts.
                match tokio::spawn(next.run(req)).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, %path, "a console change failed unexpectedly");
                        PageError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the change failed unexpectedly; see the server log",
                        )
                        .into_response()
                    }
                }
            }
        }
        None if public(&path) => {
            req.extensions_mut().insert(Ctx {
                caller: Caller {
                    name: "(signed out)".into(),
                    role: Role::Viewer,
                },
                csrf: csrf.clone(),
                signed_in: false,
            });
            next.run(req).await
        }
        None if req.method() == Method::GET || req.method() == Method::HEAD => {
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &target)
                .finish();
            see_other(&format!("/signin?{query}"))
        }
        None => PageError::new(StatusCode::UNAUTHORIZED, "sign in first").into_response(),
    };
    if csrf_cookie.is_none() {
        set_cookie(&mut response, cookie(CSRF, csrf, c.secure));
    }
    response
}

/// A change posted from a console form: its fields, once the CSRF token, the origin and the
/// caller's role have been checked (the role the API asks for the same change: a console path
/// is the API's without `/api/v1`).
pub struct Submitted {
    pub ctx: Ctx,
    pub fields: Vec<(String, String)>,
}

impl Submitted {
    /// The first value of field `name` ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of field `name`, in form order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl FromRequest<Console> for Submitted {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &Console) -> Result<Self, Self::Rejection> {
        let forbidden = |why: &str| PageError::new(StatusCode::FORBIDDEN, why);
        let headers = req.headers().clone();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let ctx = req
            .extensions()
            .get::<Ctx>()
            .cloned()
            .ok_or_else(|| forbidden("sign in first"))?;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let same = origin.to_str().ok().zip(host).is_some_and(|(o, h)| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    == Some(h)
            });
            if !same {
                return Err(forbidden(
                    "refused: the form was posted from another site (Origin does not match)",
                ));
            }
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| PageError::new(e.status(), e.body_text()))?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        let cookie = cookie_value(&headers, CSRF);
        if sent.is_none() || sent != cookie.as_deref() {
            return Err(forbidden(
                "refused: the form's CSRF token is missing or does not match (reload the page and try again)",
            ));
        }
        if path != "/signin" && path != "/signout" {
            let needed = required_role(&method, &format!("/api/v1{path}"));
            if !ctx.may(needed) {
                return Err(forbidden(&format!(
                    "{path} needs the {} role; {:?} has {}",
                    needed.as_str(),
                    ctx.caller.name,
                    ctx.caller.role.as_str()
                )));
            }
            info!(
                target: "flotilla::audit",
                caller = %ctx.caller.name,
                %method,
                %path,
                "console change"
            );
        }
        Ok(Self { ctx, fields })
    }
}

/// A same-site path to go back to after signing in (anything else: the overview).
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn signin_form(ctx: &Ctx, next: &str, error: Option<&str>) -> Markup {
    html! {
        form.card method="post" action="/signin" {
            (ctx.csrf_field())
            input type="hidden" name="next" value=(local_path(next));
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            p.hint { "A token from the server's --api-tokens file; its role decides what you may change." }
            button type="submit" { "Sign in" }
        }
    }
}

pub async fn signin_page(
    State(c): State<Console>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    if c.tokens.is_none() {
        return Ok(see_other("/"));
    }
    let next = q.get("next").map_or("/", String::as_str);
    let body = signin_form(&ctx, next, None);
    Ok(layout(&ctx, Section::None, "Sign in", body).into_response())
}

pub async fn signin(State(c): State<Console>, form: Submitted) -> PageResult {
    let Some(tokens) = &c.tokens else {
        return Ok(see_other("/"));
    };
    let next = local_path(form.get("next")).to_owned();
    let token = form.get("token");
    if tokens.caller_of_token(token).is_none() {
        let body = signin_form(&form.ctx, &next, Some("That is not a valid API token."));
        let page = layout(&form.ctx, Section::None, "Sign in", body);
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    }
    let mut r = see_other(&next);
    let mut session = cookie(SESSION, token.trim().to_owned(), c.secure);
    session.set_max_age(cookie::time::Duration::hours(SESSION_HOURS));
    set_cookie(&mut r, session);
    Ok(r)
}

pub async fn signout(State(c): State<Console>, _form: Submitted) -> PageResult {
    let mut r = see_other("/signin");
    let mut gone = cookie(SESSION, String::new(), c.secure);
    gone.make_removal();
    set_cookie(&mut r, gone);
    Ok(r)
}
