//! The memory rows: the RSS after each step against the 128 MiB goal, the growth per object
//! against its JSON size, and the JSON size of what the operator's caches hold.

use anyhow::Result;
use ckb_crds::ConfidentialKeyBinding;
use ckb_operator::caches::{PolicySummary, policy_label_selector};
use ckb_operator::controller::index::{INJECTED_LABEL, slim_pod};
use ckb_operator::webhook::sources::PREPARED_POLICY_BYTES;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, Client};

use super::Readings;
use super::load::ADMITTED_POLICIES;
use crate::Args;
use crate::measure::{json_bytes, mib};
use crate::table::Section;

/// The operator's memory goal, MiB.
const GOAL_MIB: f64 = 128.0;

/// What the operator's caches hold, as the API server lists it.
pub struct Payload {
    /// Every binding.
    bindings: Vec<ConfidentialKeyBinding>,
    /// The policy ConfigMaps.
    config_maps: Vec<ConfigMap>,
    /// What the policy cache keeps of each ConfigMap: its summary for the referenced key.
    summaries: Vec<PolicySummary>,
    /// The injected pods, slimmed as the operator slims them.
    pods: Vec<Pod>,
}

impl Payload {
    /// Lists the objects the caches hold and reduces them as the caches do.
    pub async fn list(client: &Client) -> Result<Self> {
        let bindings = Api::<ConfidentialKeyBinding>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let config_maps = Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default().labels(&policy_label_selector()))
            .await?
            .items;
        let key = "policy.rego".to_string();
        let summaries = config_maps
            .iter()
            .map(|c| PolicySummary::of(c, [&key]))
            .collect();
        let mut pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
            .await?
            .items;
        for p in &mut pods {
            slim_pod(p);
        }
        Ok(Self {
            bindings,
            config_maps,
            summaries,
            pods,
        })
    }
}

/// Appends the memory rows in the table's order.
pub fn rows(args: &Args, readings: &Readings, payload: &Payload) -> Result<()> {
    let section = Section::new(&args.rows, "memory");
    rss_rows(&section, args, readings)?;
    growth_rows(&section, args, readings, payload)?;
    section.row(
        "cache payload (JSON) bindings / policy summaries (of ConfigMaps holding) / slimmed pods: MiB",
        &format!(
            "{:.1} / {:.2} (of {:.1}) / {:.1}",
            json_bytes(&payload.bindings) as f64 / 1048576.0,
            json_bytes(&payload.summaries) as f64 / 1048576.0,
            json_bytes(&payload.config_maps) as f64 / 1048576.0,
            json_bytes(&payload.pods) as f64 / 1048576.0
        ),
        "",
        "",
    )
}

/// The RSS after each step; those with the whole load against the goal.
fn rss_rows(section: &Section<'_>, args: &Args, r: &Readings) -> Result<()> {
    let plain = |figure: &str, kib: u64| section.row(figure, &format!("{:.1}", mib(kib)), "", "");
    let against_goal = |figure: &str, kib: u64| {
        section.row(
            figure,
            &format!("{:.1}", mib(kib)),
            &format!("{GOAL_MIB:.0}"),
            &format!("{:.2}", mib(kib) / GOAL_MIB),
        )
    };
    plain("operator RSS at rest: MiB", r.rest)?;
    plain(
        &format!(
            "RSS with {} policy ConfigMaps ({} KiB each): MiB",
            args.bindings, args.policy_kib
        ),
        r.config_maps,
    )?;
    plain(
        &format!("RSS with + {} bindings: MiB", args.bindings),
        r.bindings,
    )?;
    against_goal(
        &format!(
            "RSS with + {} injected pods: MiB (vs the 128 MiB goal)",
            args.pods
        ),
        r.pods,
    )?;
    against_goal(
        &format!(
            "RSS with + {ADMITTED_POLICIES} pods admitted by the webhook, each with its own policy (its prepared-policy cache full, bound {} MiB): MiB (vs the 128 MiB goal)",
            PREPARED_POLICY_BYTES / 1048576
        ),
        r.admitted,
    )?;
    against_goal("peak RSS (VmHWM): MiB (vs the 128 MiB goal)", r.peak)
}

/// The RSS growth per object of each step against the JSON size of what the caches keep of it.
fn growth_rows(section: &Section<'_>, args: &Args, r: &Readings, payload: &Payload) -> Result<()> {
    let kib_each = |bytes: usize, n: usize| bytes as f64 / 1024.0 / n.max(1) as f64;
    let (cms, bindings, pods) = (&payload.config_maps, &payload.bindings, &payload.pods);
    let binding_bytes = json_bytes(bindings) + json_bytes(&payload.summaries);
    // Figure, RSS growth (KiB), objects it is shared by, JSON size of one object (KiB).
    let table = [
        (
            "growth per policy ConfigMap no binding references yet (watched by metadata only): KiB (vs its JSON size)",
            r.config_maps.saturating_sub(r.rest),
            args.bindings,
            format!("{:.1}", kib_each(json_bytes(cms), cms.len())),
        ),
        (
            "growth per binding, its policy ConfigMap now fetched and summarized: KiB (vs the JSON size of the binding and the summary)",
            r.bindings.saturating_sub(r.config_maps),
            args.bindings,
            format!("{:.1}", kib_each(binding_bytes, bindings.len())),
        ),
        (
            "growth per pod: KiB (vs its slimmed JSON size)",
            r.pods.saturating_sub(r.bindings),
            args.pods,
            format!("{:.2}", kib_each(json_bytes(pods), pods.len())),
        ),
    ];
    for (figure, grown_kib, objects, json_kib) in table {
        let per = grown_kib as f64 / objects.max(1) as f64;
        section.row(figure, &format!("{per:.1}"), &json_kib, "")?;
    }
    Ok(())
}
