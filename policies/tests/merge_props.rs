//! Merge properties: same-level combination is order-independent, and a
//! lower level never ends up less strict than a higher one.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tappass_policies::model::{Access, Action, Tier};
use tappass_policies::rules::{
    combine_level, stack_level, Because, Contribution, EffectiveRule, Level, RuleValue,
};
use tappass_policies::{compile, CompileOptions, PolicyError};

fn names() -> impl Strategy<Value = BTreeSet<String>> {
    proptest::collection::btree_set(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d"), Just("e")].prop_map(String::from),
        0..5,
    )
}

/// Values of one kind (so they can be combined).
fn same_kind_values() -> impl Strategy<Value = Vec<RuleValue>> {
    let n = 1..6usize;
    prop_oneof![
        proptest::collection::vec(any::<bool>().prop_map(RuleValue::Flag), n.clone()),
        proptest::collection::vec(
            prop_oneof![
                Just(Action::Log),
                Just(Action::Notify),
                Just(Action::Redact),
                Just(Action::Block)
            ]
            .prop_map(RuleValue::Action),
            n.clone()
        ),
        proptest::collection::vec((0u64..1000).prop_map(RuleValue::Ceiling), n.clone()),
        proptest::collection::vec((0u64..1000).prop_map(RuleValue::Floor), n.clone()),
        proptest::collection::vec(names().prop_map(RuleValue::Allow), n.clone()),
        proptest::collection::vec(names().prop_map(RuleValue::Deny), n.clone()),
        proptest::collection::vec(
            prop_oneof![
                Just(Access::Deny),
                Just(Access::Read),
                Just(Access::ReadWrite)
            ]
            .prop_map(RuleValue::Access),
            n.clone()
        ),
        proptest::collection::vec(
            prop_oneof![
                Just(Tier::Observer),
                Just(Tier::Worker),
                Just(Tier::Standard),
                Just(Tier::Full)
            ]
            .prop_map(RuleValue::Tier),
            n
        ),
    ]
}

fn contribution(level: Level, i: usize, value: RuleValue, direct: bool) -> Contribution {
    Contribution {
        key: "k".into(),
        value,
        because: Because {
            level,
            via: vec![],
            source: format!("f{i}.yaml:{i}"),
            defined_at: None,
        },
        direct,
    }
}

fn fold(values: &[RuleValue]) -> RuleValue {
    values[1..]
        .iter()
        .fold(values[0].clone(), |acc, v| acc.combine(v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn same_level_combination_is_order_independent(values in same_kind_values(), seed in any::<u64>()) {
        let forward = fold(&values);
        let mut shuffled = values.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(&forward, &fold(&shuffled));
        let mut reversed = values.clone();
        reversed.reverse();
        prop_assert_eq!(&forward, &fold(&reversed));
        // The combination is at least as strict as every input.
        for v in &values {
            prop_assert!(!v.relaxes(&forward) || matches!(v, RuleValue::Deny(_)), "{:?} relaxed by {:?}", v, forward);
        }
        // combine_level agrees with the fold, whatever the input order.
        let cs: Vec<Contribution> = values.iter().enumerate().map(|(i, v)| contribution(Level::Org, i, v.clone(), true)).collect();
        let mut rev = cs.clone();
        rev.reverse();
        let a = combine_level(Level::Org, &cs).unwrap();
        let b = combine_level(Level::Org, &rev).unwrap();
        prop_assert_eq!(&a["k"].rule.value, &forward);
        prop_assert_eq!(&a, &b);
    }

    #[test]
    fn a_lower_level_never_relaxes_a_higher_one(values in same_kind_values(), lower_direct in any::<bool>()) {
        prop_assume!(values.len() >= 2);
        let higher = values[0].clone();
        let lower = values[1].clone();
        let mut inherited: BTreeMap<String, EffectiveRule> = BTreeMap::new();
        stack_level(&mut inherited, Level::Org, combine_level(Level::Org, &[contribution(Level::Org, 0, higher.clone(), true)]).unwrap()).unwrap();
        let lower_c = combine_level(Level::Agent, &[contribution(Level::Agent, 1, lower.clone(), lower_direct)]).unwrap();
        match stack_level(&mut inherited, Level::Agent, lower_c) {
            Err(PolicyError::Relax(r)) => {
                prop_assert!(lower_direct && higher.relaxes(&lower));
                prop_assert_eq!(&r.higher_level, "org");
                prop_assert_eq!(&r.lower_level, "agent");
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
            Ok(()) => {
                prop_assert!(!(lower_direct && higher.relaxes(&lower)), "a direct relaxation was accepted");
                let result = &inherited["k"].value;
                prop_assert!(!higher.relaxes(result), "{:?} ended up relaxed to {:?}", higher, result);
                prop_assert_eq!(result, &higher.combine(&lower).unwrap());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// End to end through YAML: org, project and agent ceilings.
    #[test]
    fn compiled_ceilings_follow_the_cascade(org in 1u64..100, project in proptest::option::of(1u64..100), agent in proptest::option::of(1u64..100)) {
        let org_y = format!("budget:\n  requests_per_minute: {org}\n");
        let proj_y = project.map(|p| format!("budget:\n  requests_per_minute: {p}\n")).unwrap_or_else(|| "packs: []\n".into());
        let agent_y = format!("agent:\n  name: a\n  project: p\n{}", agent.map(|a| format!("budget:\n  requests_per_minute: {a}\n")).unwrap_or_default());
        let src = common::tree(&[("org/o.yaml", &org_y), ("projects/p/p.yaml", &proj_y), ("agents/a/a.yaml", &agent_y)]);
        let result = compile(&src, "a", &CompileOptions::default());
        let relaxes = project.is_some_and(|p| p > org) || agent.is_some_and(|a| a > project.unwrap_or(org).min(org));
        match result {
            Err(PolicyError::Relax(r)) => {
                prop_assert!(relaxes);
                prop_assert_eq!(&r.key, "budget.requests_per_minute");
            }
            Err(e) => prop_assert!(false, "{e}"),
            Ok(c) => {
                prop_assert!(!relaxes);
                let expected = [Some(org), project, agent].into_iter().flatten().min().unwrap();
                prop_assert_eq!(c.policy.budget.requests_per_minute, Some(expected));
            }
        }
    }
}
