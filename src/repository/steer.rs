//! Operator actions on a model's rollout, and the shadow's set-up: a
//! canary's weight and promotion (`POST /v2/repository/models/{m}/canary`),
//! a shadow's start, stop and promotion to canary or stable
//! (`POST /v2/repository/models/{m}/shadow`), and the timer that promotes a
//! shadow once its evidence says so. Each lasts until the model's config
//! changes.

use super::shadow::{self, Shadow};
use super::{ModelState, Repository, canary, canary_seed, config};
use crate::error::{Error, Result};
use crate::pb;
use crate::telemetry;
use std::sync::Arc;

/// An operator's instruction to a model's canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAction {
    /// Send this share (0–100) of unpinned requests to the canary.
    Weight(u32),
    /// The canary becomes the stable version.
    Promote,
}

/// An operator's instruction to a model's shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowAction {
    /// Copy this share (0-100) of unpinned requests to `version`.
    Set {
        version: i64,
        percent: u32,
    },
    /// Copy nothing more; the version stays out of unpinned traffic.
    Stop,
    Promote(PromoteTo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteTo {
    /// The shadow becomes the canary at this weight, beside the version
    /// serving now as stable, with the canary's automatic rollback.
    Canary(u32),
    /// The shadow becomes the stable version at once.
    Stable,
}

/// What the shadow report answers: the running shadow, else the last one.
pub struct ShadowState {
    pub shadow: Arc<Shadow>,
    pub running: bool,
    /// The version answering unpinned requests.
    pub serving: Option<i64>,
}

/// Starts, keeps or ends a model's shadow as `plan` says (the config's
/// or an operator's); a shadow of the same version and settings keeps its
/// comparison. Refused plans leave no shadow.
pub(super) fn set_up_shadow(
    name: &str,
    state: &mut ModelState,
    config: &pb::ModelConfig,
    config_hash: u64,
    plan: Result<Option<shadow::Plan>, String>,
) -> Result<(), String> {
    let settings = default_settings(config);
    let (plan, settings) = match plan.and_then(|p| Ok((p, settings?))) {
        Ok(found) => found,
        Err(problem) => {
            end_shadow(name, state);
            return Err(problem);
        }
    };
    state.shadow_plan = Some((config_hash, plan));
    let Some(plan) = plan else {
        end_shadow(name, state);
        return Ok(());
    };
    match &state.shadow {
        Some(running) if running.version == plan.version && running.settings == settings => {
            running.set_percent(plan.percent);
        }
        _ => {
            end_shadow(name, state);
            tracing::info!(model = %name, shadow = plan.version, percent = plan.percent, "shadow");
            state.shadow = Some(Arc::new(Shadow::new(plan, settings, canary_seed(name) ^ SHADOW_SEED)));
        }
    }
    telemetry::set_shadow_percent(name, plan.version, plan.percent);
    Ok(())
}

/// Kept apart from the canary's split, so the two draws are independent.
const SHADOW_SEED: u64 = 0x5eed_5eed_5eed_5eed;

/// The shadow's settings with its default queue: two full batches per
/// instance of the model.
fn default_settings(config: &pb::ModelConfig) -> Result<shadow::Settings, String> {
    let queue = 2 * config::instance_count(config) * config.max_batch_size.max(1) as usize;
    shadow::settings(config, queue)
}

/// Stops the running shadow, keeping it for its report.
fn end_shadow(name: &str, state: &mut ModelState) {
    if let Some(old) = state.shadow.take() {
        telemetry::set_shadow_percent(name, old.version, 0);
        state.shadow_last = Some(old);
    }
}

impl Repository {
    /// The shadow plan for a (re)load: an operator's, or the config's
    /// earlier one, while the config text is unchanged; else the config's.
    pub(super) fn shadow_plan(
        &self,
        name: &str,
        config: &pb::ModelConfig,
        served: &[i64],
        config_hash: u64,
    ) -> Result<Option<shadow::Plan>, String> {
        let models = self.models.read();
        let state = models.get(name);
        let canary = |state: Option<&ModelState>| state.and_then(|s| s.canary.as_ref()).map(|c| (c.stable, c.canary));
        if let Some((hash, plan)) = state.and_then(|s| s.shadow_plan)
            && hash == config_hash
        {
            if let Some(plan) = plan {
                shadow::check(plan, served, canary(state))?;
            }
            return Ok(plan);
        }
        let canary = canary::plan(config, served).ok().flatten();
        shadow::plan(config, served, canary)
    }

    /// Operator actions on a canary: `weight` sets its share (0 rolls it
    /// back); `promote` makes it the stable version (the old stable version
    /// becomes an idle canary at weight 0). Lasts until the config changes.
    pub fn steer_canary(&self, name: &str, action: CanaryAction) -> Result<()> {
        let mut models = self.models.write();
        let state = models.get_mut(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        let current = state.canary.clone().ok_or_else(|| {
            Error::invalid(format!("model '{name}' has no canary (set canary_version in its config)"))
        })?;
        match action {
            CanaryAction::Weight(weight) => {
                if weight > 100 {
                    return Err(Error::invalid(format!("canary weight {weight} is over 100")));
                }
                let reason = (weight == 0).then(|| "rolled back by the operator".to_string());
                if weight == 0 && current.weight() > 0 {
                    telemetry::record_canary_rollback(name, current.canary, "operator");
                }
                current.set_weight(weight as u8, reason);
                telemetry::set_canary_weight(name, current.canary, weight as u8);
                tracing::info!(model = %name, canary = current.canary, weight, "canary weight set by the operator");
            }
            CanaryAction::Promote => {
                let plan = canary::Plan { stable: current.canary, canary: current.stable, weight: 0 };
                telemetry::set_canary_weight(name, current.canary, 0);
                telemetry::set_canary_weight(name, plan.canary, 0);
                state.canary = Some(Arc::new(canary::Canary::new(plan, canary_seed(name))));
                tracing::info!(model = %name, stable = plan.stable, "canary promoted to stable");
            }
        }
        Ok(())
    }

    /// Operator actions on a shadow. Setting or promoting one reloads the
    /// version in its new role (a shadow's threads run at SCHED_IDLE, a
    /// promoted one's at normal priority again) the way a hot swap does:
    /// the copy it replaces serves until the new one is ready.
    pub async fn steer_shadow(self: &Arc<Self>, name: &str, action: ShadowAction, trigger: &'static str) -> Result<()> {
        let reload = {
            let mut models = self.models.write();
            let state = models.get_mut(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
            self.steer_shadow_state(name, state, action, trigger)?
        };
        if !reload {
            return Ok(());
        }
        let config_json = self.models.read().get(name).and_then(|s| s.config_json.clone());
        self.load_with(name, config_json).await
    }

    /// The state change of `steer_shadow`; whether the model must reload.
    fn steer_shadow_state(
        &self,
        name: &str,
        state: &mut ModelState,
        action: ShadowAction,
        trigger: &'static str,
    ) -> Result<bool> {
        let served: Vec<i64> = state.versions.iter().filter(|(_, v)| v.serving.is_some()).map(|(n, _)| *n).collect();
        let hash = state.config_hash;
        match action {
            ShadowAction::Set { version, percent } => {
                if percent > 100 {
                    return Err(Error::invalid(format!("shadow percent {percent} is over 100")));
                }
                let plan = shadow::Plan { version, percent: percent as u8 };
                let canary = state.canary.as_ref().filter(|c| c.weight() > 0).map(|c| (c.stable, c.canary));
                shadow::check(plan, &served, canary).map_err(Error::invalid)?;
                state.shadow_plan = Some((hash, Some(plan)));
                tracing::info!(model = %name, shadow = version, percent, "shadow set by the operator");
                // Same version: the percent changes in place; else it loads as the shadow.
                match &state.shadow {
                    Some(running) if running.version == version => {
                        running.set_percent(plan.percent);
                        telemetry::set_shadow_percent(name, version, plan.percent);
                        Ok(false)
                    }
                    _ => Ok(true),
                }
            }
            ShadowAction::Stop => {
                let running = running_shadow(name, state)?;
                running.set_percent(0);
                telemetry::set_shadow_percent(name, running.version, 0);
                state.shadow_plan = Some((hash, Some(running.plan())));
                tracing::info!(model = %name, shadow = running.version, "shadow stopped by the operator");
                Ok(false)
            }
            ShadowAction::Promote(to) => {
                let running = running_shadow(name, state)?;
                let serving = self.lookup(name, "", state)?.version;
                if let Some(c) = state.canary.as_ref().filter(|c| c.weight() > 0) {
                    return Err(Error::invalid(format!(
                        "model '{name}' runs a canary (version {} at weight {}); promote or roll it back first",
                        c.canary,
                        c.weight()
                    )));
                }
                let plan = match to {
                    PromoteTo::Canary(weight) if (1..=100).contains(&weight) => {
                        canary::Plan { stable: serving, canary: running.version, weight: weight as u8 }
                    }
                    PromoteTo::Canary(weight) => {
                        return Err(Error::invalid(format!("canary weight {weight} is outside 1-100")));
                    }
                    PromoteTo::Stable => canary::Plan { stable: running.version, canary: serving, weight: 0 },
                };
                if let Some(old) = state.canary.take() {
                    telemetry::set_canary_weight(name, old.canary, 0);
                }
                telemetry::set_canary_weight(name, plan.canary, plan.weight);
                state.canary = Some(Arc::new(canary::Canary::new(plan, canary_seed(name))));
                state.shadow_plan = Some((hash, None));
                end_shadow(name, state);
                let to = if matches!(to, PromoteTo::Stable) { "stable" } else { "canary" };
                telemetry::record_shadow_promotion(name, running.version, to, trigger);
                tracing::info!(model = %name, shadow = running.version, to, trigger, "shadow promoted");
                Ok(true)
            }
        }
    }

    /// The model's shadow for its report: the running one, else the last.
    pub fn shadow(&self, name: &str) -> Result<Option<ShadowState>> {
        let models = self.models.read();
        let state = models.get(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        let serving = self.lookup(name, "", state).ok().map(|v| v.version);
        Ok(match (&state.shadow, &state.shadow_last) {
            (Some(shadow), _) => Some(ShadowState { shadow: shadow.clone(), running: true, serving }),
            (None, Some(shadow)) => Some(ShadowState { shadow: shadow.clone(), running: false, serving }),
            (None, None) => None,
        })
    }

    /// On the server's timer: exports every shadow's comparison, and
    /// promotes to canary each shadow whose evidence says so.
    pub fn tend_shadows(self: &Arc<Self>) {
        let shadows: Vec<(String, Arc<Shadow>)> =
            self.models.read().iter().filter_map(|(name, state)| Some((name.clone(), state.shadow.clone()?))).collect();
        for (name, shadow) in shadows {
            telemetry::publish_shadow(&name, shadow.version, &shadow.report());
            let (Some(reason), Some(promote)) = (shadow.take_due(), shadow.settings.promote) else { continue };
            tracing::info!(model = %name, shadow = shadow.version, %reason, "the shadow's evidence meets its thresholds");
            let action = ShadowAction::Promote(PromoteTo::Canary(u32::from(promote.weight)));
            // The reload runs on its own task: the timer keeps its pace.
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.steer_shadow(&name, action, "automatic").await {
                    tracing::warn!(model = %name, shadow = shadow.version, %error, "the shadow could not be promoted");
                }
            });
        }
    }
}

fn running_shadow(name: &str, state: &ModelState) -> Result<Arc<Shadow>> {
    state.shadow.clone().ok_or_else(|| {
        Error::invalid(format!(
            "model '{name}' has no shadow (set shadow_version in its config, or {{\"action\": \"set\", \"version\": N}})"
        ))
    })
}
