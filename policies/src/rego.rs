//! Rego with `regorus`.
//!
//! Two kinds of modules, told apart by their package:
//! - `package tappass.compile.*`: evaluated by the compiler with the agent's
//!   context as `input`; its `settings` rule (an object shaped like a policy
//!   file's rules) is merged at the module's level.
//! - `package tappass.runtime.*`: carried in the compiled policy; its
//!   `decision` rule is an entry point the gateway evaluates per tool call
//!   (`{"action": "allow" | "require_approval" | "deny", "reasons": [...]}`)
//!   with the compiled policy's aspects as `data.policy`.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::compiled::{CompiledPolicy, RegoModule};
use crate::error::{PolicyError, Result};

pub const COMPILE_PREFIX: &str = "data.tappass.compile.";
pub const RUNTIME_PREFIX: &str = "data.tappass.runtime.";

fn rego_err(file: &str, e: impl std::fmt::Display) -> PolicyError {
    // regorus errors are multi-line with source excerpts; keep them whole.
    PolicyError::Rego {
        file: file.to_string(),
        message: e.to_string().trim().to_string(),
    }
}

fn to_regorus(file: &str, v: &Json) -> Result<regorus::Value> {
    regorus::Value::from_json_str(&v.to_string()).map_err(|e| rego_err(file, e))
}

fn from_regorus(file: &str, v: &regorus::Value) -> Result<Option<Json>> {
    if *v == regorus::Value::Undefined {
        return Ok(None);
    }
    let s = v.to_json_str().map_err(|e| rego_err(file, e))?;
    serde_json::from_str(&s)
        .map(Some)
        .map_err(|e| rego_err(file, e))
}

/// Parse a module and return its package (`data.x.y`).
pub fn package_of(file: &str, text: &str) -> Result<String> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(file.to_string(), text.to_string())
        .map_err(|e| rego_err(file, e))
}

/// Evaluate a compile-time module's `settings` rule against `input`.
pub fn eval_compile_module(file: &str, text: &str, input: &Json) -> Result<Option<Json>> {
    let mut engine = regorus::Engine::new();
    let pkg = engine
        .add_policy(file.to_string(), text.to_string())
        .map_err(|e| rego_err(file, e))?;
    if !pkg.starts_with(COMPILE_PREFIX) {
        return Err(rego_err(
            file,
            format!("package {pkg} is not a compile-time module"),
        ));
    }
    engine.set_input(to_regorus(file, input)?);
    let v = engine
        .eval_rule(format!("{pkg}.settings"))
        .map_err(|e| rego_err(file, e))?;
    from_regorus(file, &v)
}

/// A decision from the runtime entry points, strictest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegoAction {
    Allow,
    RequireApproval,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegoDecision {
    pub action: RegoAction,
    /// `entrypoint: reason` for every entry point that did not allow.
    pub reasons: Vec<String>,
}

/// The runtime Rego of one compiled policy, parsed once (per snapshot).
/// Cloning the engine per evaluation keeps this shareable across threads.
///
/// Entry points run on regorus' Rego VM (bytecode compiled once per
/// snapshot), about five times faster than its interpreter. They agree
/// (tested) except where the interpreter is stricter than OPA: iterating
/// over a value that is not a collection yields nothing on the VM, as in
/// OPA, where the interpreter failed.
#[derive(Clone)]
pub struct PreparedRego {
    engine: regorus::Engine,
    entrypoints: Vec<String>,
    /// Each entry point compiled once: evaluating one builds a light
    /// engine over the shared, already analysed policy.
    compiled: Vec<Option<regorus::CompiledPolicy>>,
    /// Each entry point compiled further to a Rego VM program, run by a
    /// fresh VM per call (no interpreter set-up). `None` for an entry point
    /// the VM's compiler does not take: it is interpreted instead.
    programs: Vec<Option<std::sync::Arc<regorus::rvm::Program>>>,
    /// `data` as the VM sees it.
    data: regorus::Value,
}

/// Instructions one evaluation may execute before it fails (and the call
/// with it): a runaway policy cannot hold a worker.
const MAX_VM_INSTRUCTIONS: usize = 200_000;

impl std::fmt::Debug for PreparedRego {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRego")
            .field("entrypoints", &self.entrypoints)
            .finish()
    }
}

/// The `data.policy` document runtime modules see.
pub fn policy_data(policy: &CompiledPolicy) -> Json {
    serde_json::json!({
        "policy": {
            "identity": policy.identity,
            "tools": policy.tools,
            "network": policy.network,
            "budget": policy.budget,
        }
    })
}

impl PreparedRego {
    pub fn new(policy: &CompiledPolicy) -> Result<PreparedRego> {
        Self::from_modules(
            &policy.rego.modules,
            &policy.rego.entrypoints,
            &policy_data(policy),
        )
    }

    pub fn from_modules(
        modules: &[RegoModule],
        entrypoints: &[String],
        data: &Json,
    ) -> Result<PreparedRego> {
        let mut engine = regorus::Engine::new();
        for m in modules {
            let pkg = engine
                .add_policy(m.path.clone(), m.text.clone())
                .map_err(|e| rego_err(&m.path, e))?;
            if pkg != m.package {
                return Err(rego_err(
                    &m.path,
                    format!("package is {pkg}, the compiled policy says {}", m.package),
                ));
            }
        }
        engine
            .add_data(to_regorus("data", data)?)
            .map_err(|e| rego_err("data", e))?;
        for ep in entrypoints {
            if !modules
                .iter()
                .any(|m| ep.starts_with(&format!("{}.", m.package)))
            {
                return Err(rego_err(ep, "entry point is in no module"));
            }
        }
        // Each entry point is compiled once (rule analysis, scheduling,
        // loop hoisting). One that does not compile is evaluated on a clone
        // of the engine instead, which reports its error per call.
        let compiled: Vec<Option<regorus::CompiledPolicy>> = entrypoints
            .iter()
            .map(|ep| {
                let rule: std::sync::Arc<str> = std::sync::Arc::from(ep.as_str());
                engine.compile_with_entrypoint(&rule).ok()
            })
            .collect();
        let programs = entrypoints
            .iter()
            .zip(&compiled)
            .map(|(ep, c)| {
                let c = c.as_ref()?;
                regorus::languages::rego::compiler::Compiler::compile_from_policy(c, &[ep]).ok()
            })
            .collect();
        Ok(PreparedRego {
            engine,
            entrypoints: entrypoints.to_vec(),
            compiled,
            programs,
            data: to_regorus("data", data)?,
        })
    }

    /// Evaluate entry point `i` on the interpreter (`vm: false`) or on the
    /// VM where it compiled to a program.
    fn eval_at(&self, i: usize, input: regorus::Value, vm: bool) -> Result<regorus::Value> {
        let ep = &self.entrypoints[i];
        match (&self.compiled[i], self.programs[i].as_ref().filter(|_| vm)) {
            (Some(c), Some(program)) => {
                let mut m = regorus::rvm::RegoVM::new_with_policy(c.clone());
                m.load_program(program.clone());
                m.set_max_instructions(MAX_VM_INSTRUCTIONS);
                m.set_data(self.data.clone()).map_err(|e| rego_err(ep, e))?;
                m.set_input(input);
                m.execute_entry_point_by_name(ep)
                    .map_err(|e| rego_err(ep, e))
            }
            (Some(c), None) => c.eval_with_input(input).map_err(|e| rego_err(ep, e)),
            (None, _) => {
                let mut engine = self.engine.clone();
                engine.set_input(input);
                engine
                    .eval_rule(ep.to_string())
                    .map_err(|e| rego_err(ep, e))
            }
        }
    }

    /// Evaluate one entry point on the interpreter only (to check that the
    /// VM agrees with it).
    pub fn eval_interpreted(&self, entrypoint: &str, input: &Json) -> Result<Option<Json>> {
        let Some(i) = self.entrypoints.iter().position(|e| e == entrypoint) else {
            return Err(rego_err(entrypoint, "not an entry point of this policy"));
        };
        let v = self.eval_at(i, to_regorus(entrypoint, input)?, false)?;
        from_regorus(entrypoint, &v)
    }

    /// Whether entry point `entrypoint` runs on the VM.
    pub fn runs_on_vm(&self, entrypoint: &str) -> bool {
        self.entrypoints
            .iter()
            .position(|e| e == entrypoint)
            .is_some_and(|i| self.programs[i].is_some())
    }

    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    /// Evaluate one entry point against `input`. `None` when undefined.
    pub fn eval(&self, entrypoint: &str, input: &Json) -> Result<Option<Json>> {
        let input = to_regorus(entrypoint, input)?;
        let v = match self.entrypoints.iter().position(|e| e == entrypoint) {
            Some(i) => self.eval_at(i, input, true)?,
            // Any other rule of the modules, on the interpreter.
            None => {
                let mut engine = self.engine.clone();
                engine.set_input(input);
                engine
                    .eval_rule(entrypoint.to_string())
                    .map_err(|e| rego_err(entrypoint, e))?
            }
        };
        from_regorus(entrypoint, &v)
    }

    /// Evaluate every entry point; the strictest decision wins. An undefined
    /// entry point allows; a malformed decision denies (fail closed).
    pub fn decide(&self, input: &Json) -> Result<RegoDecision> {
        let mut action = RegoAction::Allow;
        let mut reasons = Vec::new();
        for ep in &self.entrypoints {
            let Some(v) = self.eval(ep, input)? else {
                continue;
            };
            let (a, rs) = match parse_decision(&v) {
                Some(d) => d,
                None => (RegoAction::Deny, vec![format!("malformed decision {v}")]),
            };
            if a != RegoAction::Allow {
                for r in rs {
                    reasons.push(format!("{ep}: {r}"));
                }
                if rs_empty_placeholder(&reasons, ep) {
                    reasons.push(format!("{ep}: {a:?}"));
                }
            }
            action = action.max(a);
        }
        Ok(RegoDecision { action, reasons })
    }
}

fn rs_empty_placeholder(reasons: &[String], ep: &str) -> bool {
    !reasons.iter().any(|r| r.starts_with(&format!("{ep}: ")))
}

fn parse_decision(v: &Json) -> Option<(RegoAction, Vec<String>)> {
    let obj = v.as_object()?;
    let action: RegoAction = serde_json::from_value(obj.get("action")?.clone()).ok()?;
    let mut reasons = Vec::new();
    if let Some(r) = obj.get("reason").and_then(Json::as_str) {
        reasons.push(r.to_string());
    }
    if let Some(rs) = obj.get("reasons").and_then(Json::as_array) {
        for r in rs {
            reasons.push(
                r.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| r.to_string()),
            );
        }
    }
    Some((action, reasons))
}

/// Evaluate one entry point of a compiled policy against an input (parses
/// the modules each call; the gateway keeps a [`PreparedRego`] instead).
pub fn evaluate_entrypoint(
    policy: &CompiledPolicy,
    entrypoint: &str,
    input: &Json,
) -> Result<Option<Json>> {
    PreparedRego::new(policy)?.eval(entrypoint, input)
}

/// Evaluate all entry points of a compiled policy.
pub fn evaluate_policy(policy: &CompiledPolicy, input: &Json) -> Result<RegoDecision> {
    PreparedRego::new(policy)?.decide(input)
}
