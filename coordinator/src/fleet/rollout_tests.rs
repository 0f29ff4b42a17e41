use super::*;

fn rollout(plan: Plan, budget: ErrorBudget) -> Rollout {
    Rollout {
        id: "r1".into(),
        config: "otel".into(),
        from_version: 1,
        to_version: 2,
        plan,
        soak: Duration::from_secs(10),
        error_budget: budget,
        state: State::Running,
        reason: String::new(),
        phases: Vec::new(),
        agents_total: 0,
        created_by: "test".into(),
        created_unix_ms: 0,
        updated_unix_ms: 0,
    }
}

fn uids(n: usize) -> Vec<Uuid> {
    (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
}

fn all(r: &Rollout, o: Outcome) -> HashMap<Uuid, Outcome> {
    r.enrolled().into_iter().map(|u| (u, o)).collect()
}

#[test]
fn three_phases_in_order_each_after_its_soak() {
    let agents = uids(100);
    let steps = Plan::Steps {
        initial: 10,
        multiplier: 3.0,
        max_per_phase: None,
    };
    let mut r = rollout(steps, ErrorBudget::default());
    let fx = r.step(0, &HashMap::new(), &agents);
    assert!(fx.desired_changed);
    assert_eq!(r.phases[0].agents, agents[..10]);
    // Pending: nothing moves.
    assert_eq!(r.step(1_000, &HashMap::new(), &agents), Effects::default());
    // Settled at 2 s; the soak of 10 s holds phase 2 back until 12 s.
    r.step(2_000, &all(&r, Outcome::Applied), &agents);
    r.step(11_999, &all(&r, Outcome::Applied), &agents);
    assert_eq!(r.phases.len(), 1);
    r.step(12_000, &all(&r, Outcome::Applied), &agents);
    assert_eq!(r.phases.len(), 2);
    assert_eq!(r.phases[1].agents, agents[10..40]);
    r.step(13_000, &all(&r, Outcome::Applied), &agents);
    r.step(23_000, &all(&r, Outcome::Applied), &agents);
    assert_eq!(
        r.phases[2].agents,
        agents[40..100],
        "the rest, though 90 were due"
    );
    r.step(24_000, &all(&r, Outcome::Applied), &agents);
    let fx = r.step(34_000, &all(&r, Outcome::Applied), &agents);
    assert!(fx.activate);
    assert_eq!(r.state, State::Completed);
    assert_eq!(r.phases.len(), 3);
}

#[test]
fn percentages_and_the_cap() {
    let pct = Plan::Percentages {
        percentages: vec![10.0, 50.0, 100.0],
    };
    assert_eq!(pct.size(0, 0, 100), 10);
    assert_eq!(pct.size(1, 10, 100), 40);
    assert_eq!(pct.size(2, 50, 100), 50);
    assert_eq!(pct.size(0, 0, 3), 1, "at least one agent");
    let capped = Plan::Steps {
        initial: 5,
        multiplier: 10.0,
        max_per_phase: Some(20),
    };
    assert_eq!(capped.size(1, 5, 100), 20);
    assert!(
        Plan::Percentages {
            percentages: vec![50.0, 40.0, 100.0]
        }
        .check()
        .is_err()
    );
    assert!(
        Plan::Percentages {
            percentages: vec![10.0, 50.0]
        }
        .check()
        .is_err()
    );
}

#[test]
fn spent_budget_rolls_back_in_the_first_phase() {
    let agents = uids(100);
    let plan = Plan::Percentages {
        percentages: vec![20.0, 60.0, 100.0],
    };
    let budget = ErrorBudget {
        max_failure_percent: 10.0,
        min_sample: 5,
        action: BudgetAction::Rollback,
    };
    let mut r = rollout(plan, budget);
    r.step(0, &HashMap::new(), &agents);
    // 4 of 20 fail: 20% > 10%, with 20 settled >= 5.
    let outcomes: HashMap<Uuid, Outcome> = r.phases[0]
        .agents
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                *u,
                if i % 5 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Applied
                },
            )
        })
        .collect();
    let fx = r.step(1_000, &outcomes, &agents);
    assert_eq!(r.state, State::RolledBack);
    assert!(fx.desired_changed && !fx.activate);
    assert!(r.reason.contains("4 of 20"), "{}", r.reason);
    assert_eq!(r.phases.len(), 1);
    assert_eq!(r.phases[0].failed, 4);
}

#[test]
fn below_the_minimum_sample_failures_do_not_stop_it_and_pause_holds() {
    let agents = uids(10);
    let budget = ErrorBudget {
        max_failure_percent: 10.0,
        min_sample: 5,
        action: BudgetAction::Pause,
    };
    let plan = Plan::Steps {
        initial: 2,
        multiplier: 2.0,
        max_per_phase: None,
    };
    let mut r = rollout(plan, budget);
    r.soak = Duration::ZERO;
    r.step(0, &HashMap::new(), &agents);
    r.step(1, &all(&r, Outcome::Failed), &agents);
    assert_eq!(r.state, State::Running, "2 settled < min sample 5");
    assert_eq!(r.phases.len(), 2);
    r.step(2, &all(&r, Outcome::Failed), &agents);
    assert_eq!(r.state, State::Paused);
    let before = r.clone();
    let fx = r.step(3, &all(&r, Outcome::Applied), &agents);
    assert_eq!(fx, Effects::default());
    assert_eq!(
        r.phases.len(),
        before.phases.len(),
        "a paused rollout takes no agents"
    );
}

#[test]
fn no_candidates_completes_at_once() {
    let mut r = rollout(
        Plan::Percentages {
            percentages: vec![100.0],
        },
        ErrorBudget::default(),
    );
    assert!(r.step(0, &HashMap::new(), &[]).activate);
    assert_eq!(r.state, State::Completed);
}

#[test]
fn plans_parse_from_json() {
    let steps: Plan = serde_json::from_str(r#"{"initial": 10, "multiplier": 3}"#).unwrap();
    assert!(matches!(steps, Plan::Steps { initial: 10, .. }));
    let pct: Plan = serde_json::from_str(r#"{"percentages": [10, 100]}"#).unwrap();
    assert!(matches!(pct, Plan::Percentages { .. }));
    assert!(serde_json::from_str::<Plan>(r#"{"initial": 1, "bogus": 2}"#).is_err());
}

#[test]
fn phase_sizes_cover_the_candidates_as_the_plan_says() {
    let steps = Plan::Steps {
        initial: 2,
        multiplier: 3.0,
        max_per_phase: Some(10),
    };
    assert_eq!(steps.phase_sizes(30, 100), vec![2, 6, 10, 10, 2]);
    let pct = Plan::Percentages {
        percentages: vec![10.0, 50.0, 100.0],
    };
    assert_eq!(pct.phase_sizes(30, 100), vec![3, 12, 15]);
    assert_eq!(pct.phase_sizes(0, 100), Vec::<usize>::new());
    assert_eq!(steps.phase_sizes(1000, 3).len(), 3);
}

#[test]
fn state_names_are_the_api_names() {
    for state in State::ALL {
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            serde_json::json!(state.as_str())
        );
    }
}

#[test]
fn agents_whose_outcome_is_unknown_settle_a_phase_and_spend_no_budget() {
    let agents = uids(10);
    let mut r = rollout(plan_of_ten(), budget_of_ten());
    r.step(0, &HashMap::new(), &agents);
    // Nine never say and one applied: the phase settles, and completes after its soak.
    let mut outcomes = all(&r, Outcome::Unknown);
    outcomes.insert(agents[0], Outcome::Applied);
    r.step(1_000, &outcomes, &agents);
    assert_eq!(r.state, State::Running);
    assert_eq!(
        (
            r.phases[0].applied,
            r.phases[0].unknown,
            r.phases[0].pending
        ),
        (1, 9, 0)
    );
    r.step(11_000, &outcomes, &agents);
    assert_eq!(r.state, State::Completed, "{}", r.reason);
    // One failure among the two that said: 50% of those settled, over the 10% budget.
    let mut r = rollout(plan_of_ten(), budget_of_ten());
    r.step(0, &HashMap::new(), &agents);
    outcomes.insert(agents[1], Outcome::Failed);
    r.step(1_000, &outcomes, &agents);
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(r.reason, "1 of 2 agents failed (50.0% > error budget 10%)");
}

fn plan_of_ten() -> Plan {
    Plan::Steps {
        initial: 10,
        multiplier: 2.0,
        max_per_phase: None,
    }
}

fn budget_of_ten() -> ErrorBudget {
    ErrorBudget {
        max_failure_percent: 10.0,
        min_sample: 1,
        action: BudgetAction::Rollback,
    }
}
