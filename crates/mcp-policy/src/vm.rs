//! Per-request evaluation on regorus' register VM (RVM).
//!
//! At load the parsed and analysed policy set is compiled once more, to
//! bytecode with two entry points, [`DECISION_RULE`] and (when the set has
//! package `mcp.log`) [`MASK_RULE`]. A request then costs a fresh
//! [`RegoVM`] (a few small vectors; the program and the data document are
//! shared through `Arc`s) and one run of the bytecode, which is four to five
//! times cheaper than walking the AST with the interpreter. The interpreter
//! stays for everything else: `policy test` (coverage), `policy eval
//! --explain` (`print()` output, which rules were defined), and any policy
//! set the VM compiler does not accept, for which [`Compiled::new`] fails and
//! the engine keeps evaluating on the interpreter.

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::VmError;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;

use crate::engine::{DECISION_RULE, MASK_RULE, describe};
use crate::error::DecisionError;

/// No instruction budget: evaluations are bounded by the wall-clock timer
/// (`EngineOptions::eval_time_limit`), like on the interpreter. The VM's own
/// default of 25 000 instructions would deny legitimate policies that loop
/// over a large `data.json`.
const MAX_INSTRUCTIONS: usize = usize::MAX;

/// A policy set compiled to bytecode, with the data document it runs on.
#[derive(Clone)]
pub(crate) struct Compiled {
    program: Arc<Program>,
    data: regorus::Value,
    has_mask: bool,
    timer: ExecutionTimerConfig,
}

/// What one run yields: the decision, and the mask rule's value (or why it
/// failed) when the set defines one.
pub(crate) struct Run {
    pub decision: regorus::Value,
    pub mask: Option<Result<regorus::Value, String>>,
}

impl Compiled {
    /// Compiles the prepared (parsed and analysed) `engine`. An error means
    /// the VM compiler does not support something in the set (or the set
    /// has no decision rule at all); the caller then evaluates on the
    /// interpreter, which reports such problems per request.
    pub(crate) fn new(
        engine: &regorus::Engine,
        has_mask: bool,
        timer: ExecutionTimerConfig,
    ) -> Result<Compiled, String> {
        let mut engine = engine.clone();
        let policy = engine
            .compile_with_entrypoint(&DECISION_RULE.into())
            .map_err(|e| describe(&e))?;
        let mut entry_points = vec![DECISION_RULE];
        if has_mask {
            entry_points.push(MASK_RULE);
        }
        let program =
            Compiler::compile_from_policy(&policy, &entry_points).map_err(|e| describe(&e))?;
        let data = engine.get_data();
        // Checked once here; a conflict would otherwise fail every request.
        program
            .check_rule_data_conflicts(&data)
            .map_err(|e| describe(&e))?;
        Ok(Compiled {
            program,
            data,
            has_mask,
            timer,
        })
    }

    pub(crate) fn set_timer(&mut self, timer: ExecutionTimerConfig) {
        self.timer = timer;
    }

    /// Runs the decision (and the mask) for `input` on a fresh VM.
    pub(crate) fn run(&self, input: regorus::Value) -> Result<Run, DecisionError> {
        let mut vm = RegoVM::new();
        vm.load_program(Arc::clone(&self.program));
        vm.set_data(self.data.clone()).map_err(|e| vm_error(&e))?;
        vm.set_input(input);
        // As on the interpreter: a builtin error (sprintf of a wrong type,
        // a bad regex, to_number("abc")) anywhere, in any rule, fails the
        // whole evaluation, and so the request, closed, rather than leaving
        // a deny rule undefined. The patched regorus (docs/upstream/
        // regorus.md) makes this hold inside rule bodies too, and reports
        // conflicting rule outputs as errors.
        vm.set_strict_builtin_errors(true);
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        vm.set_execution_timer_config(Some(self.timer));
        let decision = vm
            .execute_entry_point_by_name(DECISION_RULE)
            .map_err(|e| vm_error(&e))?;
        let mask = self.has_mask.then(|| {
            vm.execute_entry_point_by_name(MASK_RULE)
                .map_err(|e| describe(&e))
        });
        Ok(Run { decision, mask })
    }
}

/// A VM error as the engine reports it: conflicts and time-outs by kind,
/// the rest as evaluation errors.
fn vm_error(e: &VmError) -> DecisionError {
    match e {
        VmError::RuleConflict { message, .. } => DecisionError::Conflict(message.clone()),
        VmError::TimeLimitExceeded { .. } => DecisionError::Timeout(describe(e)),
        other => DecisionError::Eval(describe(other)),
    }
}
