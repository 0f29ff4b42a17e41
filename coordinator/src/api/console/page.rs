//! What every console page shares: the handlers' state, who is asking, the frame around a page
//! (navigation, the signed-in caller), and errors as pages.

use crate::api::auth::ApiTokens;
use crate::ops::{self, Caller, Ops, Role};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;

/// What every console handler holds.
#[derive(Clone)]
pub struct Console {
    pub ops: Ops,
    pub tokens: Option<Arc<ApiTokens>>,
    /// The API is served over TLS: cookies are marked Secure.
    pub secure: bool,
}

/// What a console handler knows of the request: who asks, the CSRF token its forms carry, and
/// whether the caller signed in (tokens are configured).
#[derive(Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub csrf: String,
    pub signed_in: bool,
}

impl Ctx {
    /// The hidden field every console form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Whether the caller's role allows what needs `role`.
    pub fn may(&self, role: Role) -> bool {
        self.caller.role >= role
    }
}

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Agents,
    AgentMetrics,
    Configs,
    Rollouts,
    Audit,
    None,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Overview, "/", "Overview"),
    (Section::Agents, "/agents", "Agents"),
    (Section::AgentMetrics, "/agent-metrics", "Agent metrics"),
    (Section::Configs, "/configs", "Configs"),
    (Section::Rollouts, "/rollouts", "Rollouts"),
    (Section::Audit, "/audit", "Audit"),
];

/// A whole page: the navigation, who is signed in, and `body`.
pub fn layout(ctx: &Ctx, section: Section, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Flotilla" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Flotilla" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, href, name) in SECTIONS {
                                li {
                                    @if s == section {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (ctx.caller.name) " (" (ctx.caller.role.as_str()) ")" }
                        @if ctx.signed_in {
                            form method="post" action="/signout" {
                                (ctx.csrf_field())
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An operation's error as a page: its message, with the status of the error's kind.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl From<ops::Error> for PageError {
    fn from(e: ops::Error) -> Self {
        Self {
            status: StatusCode::from_u16(e.kind().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: e.to_string(),
        }
    }
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · Flotilla" }
                    link rel="stylesheet" href="/assets/console.css";
                }
                body {
                    main #main {
                        h1 { (self.status.as_u16()) " " (title) }
                        p.error role="alert" { (self.message) }
                        p { a href="/" { "Back to the overview" } }
                    }
                }
            }
        };
        (self.status, body).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;

/// The answer to a change that worked: back to `to` (303, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}
