//! Runs the examples of this crate as tests, so that CI keeps them working.

#[path = "../custom_job.rs"]
mod custom_job;
#[path = "../flow_grpo_own_model.rs"]
mod flow_grpo_own_model;

#[test]
fn custom_job_runs() {
    custom_job::main().unwrap();
}

#[test]
fn flow_grpo_own_model_runs() {
    flow_grpo_own_model::main().unwrap();
}
