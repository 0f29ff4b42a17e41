//! `/rollouts` (the list, and a new rollout with the agents each phase would take) and
//! `/rollouts/{id}` (progress per phase, live; pause, resume, abort; why it rolled back).

use super::page::{Console, Ctx, PageResult, Section, layout, see_other};
use super::render::{badge, count, seg};
use super::session::Submitted;
use crate::fleet::rollout::{BudgetAction, ErrorBudget, Plan, State as RolloutState};
use crate::ops::rollouts::{RolloutPlan, RolloutRequest};
use crate::ops::views::RolloutView;
use crate::ops::{self, Role};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};

/// The start form's fields, as typed.
struct Form {
    config: String,
    version: String,
    plan: String,
    percentages: String,
    initial: String,
    multiplier: String,
    max_per_phase: String,
    soak: String,
    max_failure_percent: String,
    min_sample: String,
    action: String,
    allow_empty: bool,
}

impl Default for Form {
    fn default() -> Self {
        Self {
            config: String::new(),
            version: String::new(),
            plan: "percentages".into(),
            percentages: "10, 50, 100".into(),
            initial: "1".into(),
            multiplier: "2".into(),
            max_per_phase: String::new(),
            soak: "30s".into(),
            max_failure_percent: "10".into(),
            min_sample: "5".into(),
            action: "rollback".into(),
            allow_empty: false,
        }
    }
}

impl Form {
    fn of(s: &Submitted) -> Self {
        let f = |k: &str| s.get(k).trim().to_owned();
        Self {
            config: f("config"),
            version: f("version"),
            plan: f("plan"),
            percentages: f("percentages"),
            initial: f("initial"),
            multiplier: f("multiplier"),
            max_per_phase: f("max_per_phase"),
            soak: f("soak"),
            max_failure_percent: f("max_failure_percent"),
            min_sample: f("min_sample"),
            action: f("action"),
            allow_empty: s.get("allow_empty") == "1",
        }
    }

    /// The request the fields describe; an error names the field.
    fn request(&self) -> ops::Result<RolloutRequest> {
        fn num<T: std::str::FromStr>(field: &str, v: &str) -> ops::Result<T> {
            v.trim()
                .parse()
                .map_err(|_| ops::Error::BadRequest(format!("{field}: {v:?} is not a number")))
        }
        if self.config.is_empty() {
            return Err(ops::Error::BadRequest("choose a config to roll out".into()));
        }
        let phases = match self.plan.as_str() {
            "steps" => Plan::Steps {
                initial: num("first phase", &self.initial)?,
                multiplier: num("growth", &self.multiplier)?,
                max_per_phase: match self.max_per_phase.as_str() {
                    "" => None,
                    m => Some(num("largest phase", m)?),
                },
            },
            _ => Plan::Percentages {
                percentages: self
                    .percentages
                    .split(',')
                    .map(|p| num("percentages", p.trim().trim_end_matches('%')))
                    .collect::<ops::Result<_>>()?,
            },
        };
        let soak = humantime::parse_duration(&self.soak).map_err(|e| {
            ops::Error::BadRequest(format!(
                "soak: {:?} is not a duration such as 30s or 5m ({e})",
                self.soak
            ))
        })?;
        Ok(RolloutRequest {
            config: self.config.clone(),
            version: match self.version.as_str() {
                "" => None,
                v => Some(num("version", v)?),
            },
            phases,
            soak,
            error_budget: ErrorBudget {
                max_failure_percent: num("error budget", &self.max_failure_percent)?,
                min_sample: num("minimum sample", &self.min_sample)?,
                action: if self.action == "pause" {
                    BudgetAction::Pause
                } else {
                    BudgetAction::Rollback
                },
            },
            allow_empty: self.allow_empty,
        })
    }
}

pub async fn list(State(c): State<Console>, Extension(ctx): Extension<Ctx>) -> PageResult {
    render_list(&c, &ctx, &Form::default(), None, None, StatusCode::OK).await
}

async fn render_list(
    c: &Console,
    ctx: &Ctx,
    form: &Form,
    error: Option<String>,
    plan: Option<RolloutPlan>,
    status: StatusCode,
) -> PageResult {
    let rollouts = c.ops.rollouts(&ctx.caller).await?;
    let configs = c.ops.configs(&ctx.caller).await?;
    let body = html! {
        div #live data-live="5" {
            @if rollouts.is_empty() { p.muted { "No rollout yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Rollout" } th scope="col" { "Config" } th scope="col" { "State" } th scope="col" { "Progress" } th scope="col" { "Started" } th scope="col" { "By" } } }
                    tbody {
                        @for r in &rollouts {
                            tr {
                                td { a.mono href={ "/rollouts/" (seg(&r.id)) } { (r.id) } }
                                td { (r.config) " v" (r.from_version) " → v" (r.to_version) }
                                td { (badge(state_word(r.state))) }
                                td { (progress(r.applied, r.failed, r.unknown, r.pending, r.agents_total)) }
                                td { time { (r.created) } }
                                td { (r.created_by) }
                            }
                        }
                    }
                }
            }
        }
        @if ctx.may(Role::Admin) {
            section {
                h2 { "Start a rollout" }
                (start_form(ctx, form, &configs.iter().map(|c| c.name.clone()).collect::<Vec<_>>(), error.as_deref(), plan.as_ref()))
            }
        }
    };
    Ok((status, layout(ctx, Section::Rollouts, "Rollouts", body)).into_response())
}

fn start_form(
    ctx: &Ctx,
    f: &Form,
    configs: &[String],
    error: Option<&str>,
    plan: Option<&RolloutPlan>,
) -> Markup {
    html! {
        form.editor method="post" action="/rollouts" {
            (ctx.csrf_field())
            @if let Some(e) = error { p.error #problems role="alert" { strong { "Not started. " } (e) } }
            @if let Some(p) = plan {
                div.notice #plan role="status" {
                    p { "Version " (p.version) " of " (p.config) " could reach " strong data-candidates=(p.candidates) { (count(p.candidates as u64, "agent")) } "." }
                    @if p.incompatible > 0 {
                        p.error data-incompatible=(p.incompatible) {
                            (count(p.incompatible as u64, "agent")) " would fail it: their builds lack components it names."
                        }
                        ul.error { @for why in &p.incompatible_agents { li { (why) } } }
                    }
                    @if !p.phases.is_empty() {
                        ol.phases { @for (i, n) in p.phases.iter().enumerate() { li data-phase=(i + 1) { "Phase " (i + 1) ": " (count(*n as u64, "agent")) } } }
                    }
                }
            }
            div.row {
                div.field {
                    label for="config" { "Config" }
                    select #config name="config" required {
                        @for name in configs { option value=(name) selected[f.config == *name] { (name) } }
                    }
                }
                div.field {
                    label for="version" { "Version" }
                    input #version type="number" min="1" name="version" value=(f.version) placeholder="latest";
                }
            }
            fieldset {
                legend { "Phases" }
                label.check { input type="radio" name="plan" value="percentages" checked[f.plan != "steps"]; " Cumulative percentages" }
                input type="text" name="percentages" value=(f.percentages) aria-label="Cumulative percentages, rising to 100";
                label.check { input type="radio" name="plan" value="steps" checked[f.plan == "steps"]; " Growing steps" }
                div.row {
                    div.field { label for="initial" { "First phase (agents)" } input #initial type="number" min="1" name="initial" value=(f.initial); }
                    div.field { label for="multiplier" { "Growth (×)" } input #multiplier type="text" name="multiplier" value=(f.multiplier); }
                    div.field { label for="max_per_phase" { "Largest phase" } input #max_per_phase type="number" min="1" name="max_per_phase" value=(f.max_per_phase) placeholder="no limit"; }
                }
            }
            div.row {
                div.field { label for="soak" { "Soak between phases" } input #soak type="text" name="soak" value=(f.soak); }
                div.field { label for="max_failure_percent" { "Error budget (% failed)" } input #max_failure_percent type="text" name="max_failure_percent" value=(f.max_failure_percent); }
                div.field { label for="min_sample" { "Minimum sample" } input #min_sample type="number" min="1" name="min_sample" value=(f.min_sample); }
                div.field {
                    label for="action" { "When the budget is spent" }
                    select #action name="action" {
                        option value="rollback" selected[f.action != "pause"] { "roll back" }
                        option value="pause" selected[f.action == "pause"] { "pause" }
                    }
                }
            }
            label.check {
                input type="checkbox" name="allow_empty" value="1" checked[f.allow_empty];
                " Start even if no agent would take it now"
            }
            div.actions {
                button type="submit" name="intent" value="plan" { "Preview phases" }
                button.primary type="submit" name="intent" value="start" { "Start rollout" }
            }
        }
    }
}

/// The start form: `plan` shows the phases, `start` starts it (or shows why not).
pub async fn submit(State(c): State<Console>, form: Submitted) -> PageResult {
    let f = Form::of(&form);
    let ctx = &form.ctx;
    let req = match f.request() {
        Ok(r) => r,
        Err(e) => {
            return render_list(
                &c,
                ctx,
                &f,
                Some(e.to_string()),
                None,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let refused = |e: ops::Error| {
        let status =
            StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        (Some(e.to_string()), status)
    };
    if form.get("intent") == "plan" {
        return match c.ops.plan_rollout(&ctx.caller, &req).await {
            Ok(p) => render_list(&c, ctx, &f, None, Some(p), StatusCode::OK).await,
            Err(e) => {
                let (msg, status) = refused(e);
                render_list(&c, ctx, &f, msg, None, status).await
            }
        };
    }
    match c.ops.start_rollout(&ctx.caller, req).await {
        Ok(r) => Ok(see_other(&format!("/rollouts/{}", seg(&r.id)))),
        Err(e) => {
            let (msg, status) = refused(e);
            render_list(&c, ctx, &f, msg, None, status).await
        }
    }
}

fn state_word(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Completed => "completed",
        RolloutState::RolledBack => "rolled_back",
        RolloutState::Aborted => "aborted",
    }
}

/// Applied, failed and pending of `total` as a bar with the numbers written out; agents whose
/// outcome is unknown (they report no config status) are written out when there are any.
fn progress(applied: usize, failed: usize, unknown: usize, pending: usize, total: usize) -> Markup {
    let pct = |n: usize| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    html! {
        div.progress role="img" aria-label={ (applied) " applied, " (failed) " failed, " (unknown) " unknown, " (pending) " pending of " (total) } {
            span.bar.ok style={ "width:" (format!("{:.1}", pct(applied))) "%" } {}
            span.bar.bad style={ "width:" (format!("{:.1}", pct(failed))) "%" } {}
            span.bar.unknown style={ "width:" (format!("{:.1}", pct(unknown))) "%" } {}
            span.bar.warn style={ "width:" (format!("{:.1}", pct(pending))) "%" } {}
        }
        span.nums {
            (applied) " applied · " (failed) " failed · "
            @if unknown > 0 { (unknown) " unknown · " }
            (pending) " pending · " (total) " in all"
        }
    }
}

pub async fn detail(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> PageResult {
    let r = c.ops.rollout(&ctx.caller, &id).await?;
    let body = html! {
        div #live data-live="2" {
            dl.facts {
                dt { "Config" } dd { a href={ "/configs/" (seg(&r.config)) } { (r.config) } " v" (r.from_version) " → v" (r.to_version) }
                dt { "State" } dd #state data-state=(state_word(r.state)) { (badge(state_word(r.state))) }
                @if !r.reason.is_empty() {
                    dt { @if r.state == RolloutState::RolledBack { "Why it rolled back" } @else { "Why" } }
                    dd class=[(r.state == RolloutState::RolledBack).then_some("error")] { (r.reason) }
                }
                dt { "Progress" } dd { (progress(r.applied, r.failed, r.unknown, r.pending, r.agents_total)) }
                dt { "Soak" } dd { (r.soak) }
                dt { "Error budget" } dd { (r.error_budget.max_failure_percent) "% of at least " (r.error_budget.min_sample) " settled agents, then " (match r.error_budget.action { BudgetAction::Rollback => "roll back", BudgetAction::Pause => "pause" }) }
                dt { "Started" } dd { time { (r.created) } " by " (r.created_by) }
                dt { "Updated" } dd { time { (r.updated) } }
            }
            (phases(&r))
            @if ctx.may(Role::Operator) {
                div.actions {
                    @for (action, allowed) in [("pause", r.state == RolloutState::Running), ("resume", r.state == RolloutState::Paused), ("abort", r.state.is_active())] {
                        @if allowed {
                            form method="post" action={ "/rollouts/" (seg(&r.id)) "/" (action) } data-confirm=[(action == "abort").then_some("Abort this rollout? Its agents go back to the active version.")] {
                                (ctx.csrf_field())
                                button type="submit" { (capitalised(action)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(
        &ctx,
        Section::Rollouts,
        &format!("Rollout of {}", r.config),
        body,
    )
    .into_response())
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn phases(r: &RolloutView) -> Markup {
    html! {
        table.phases {
            thead { tr { th.num scope="col" { "Phase" } th.num scope="col" { "Agents" } th scope="col" { "Progress" } th scope="col" { "Started" } th scope="col" { "Settled" } th scope="col" { "Completed" } } }
            tbody {
                @for p in &r.phases {
                    tr data-phase=(p.phase) {
                        td.num { (p.phase) }
                        td.num { (p.agents) }
                        td { (progress(p.applied, p.failed, p.unknown, p.pending, p.agents)) }
                        td { time { (p.started) } }
                        td { (p.settled.clone().unwrap_or_default()) }
                        td { (p.completed.clone().unwrap_or_default()) }
                    }
                    @if !p.failures.is_empty() {
                        tr.failures data-phase-failures=(p.phase) {
                            td colspan="6" { ul.error { @for why in &p.failures { li { (why) } } } }
                        }
                    }
                }
            }
        }
    }
}

pub async fn control(
    State(c): State<Console>,
    Path((id, action)): Path<(String, String)>,
    form: Submitted,
) -> PageResult {
    c.ops
        .control_rollout(&form.ctx.caller, &id, &action)
        .await?;
    Ok(see_other(&format!("/rollouts/{}", seg(&id))))
}
