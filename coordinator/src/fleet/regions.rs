//! Where an agent belongs in a fleet of several regions (`--regions`): its home region is named
//! by its `home-region` label (an operator pins it), else by the attribute
//! `--home-region-attribute` (`cloud.region` by default), when that names a region of the fleet.

use flotilla_common::config::RegionSettings;
use std::collections::BTreeMap;

/// The label that pins an agent's home region.
pub const HOME_REGION_LABEL: &str = "home-region";

/// The home region of an agent with attributes (labels included) `attrs`; none when the fleet
/// has one region or the agent names none of its regions.
pub fn home_region<'a>(
    attrs: &BTreeMap<String, String>,
    regions: &'a RegionSettings,
) -> Option<&'a str> {
    if regions.fleet.is_empty() {
        return None;
    }
    let named = attrs
        .get(HOME_REGION_LABEL)
        .or_else(|| attrs.get(&regions.home_attribute))?;
    regions
        .fleet
        .iter()
        .find(|r| *r == named)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_pins_else_the_attribute_names_a_region_of_the_fleet() {
        let regions = RegionSettings {
            fleet: vec!["eu".into(), "us".into()],
            ..Default::default()
        };
        let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            home_region(&attrs(&[("cloud.region", "us")]), &regions),
            Some("us")
        );
        assert_eq!(
            home_region(
                &attrs(&[("cloud.region", "us"), ("home-region", "eu")]),
                &regions
            ),
            Some("eu")
        );
        // A region the fleet does not have, or none: no home (served where it is).
        assert_eq!(
            home_region(&attrs(&[("cloud.region", "ap")]), &regions),
            None
        );
        assert_eq!(home_region(&attrs(&[]), &regions), None);
        let single = RegionSettings::default();
        assert_eq!(
            home_region(&attrs(&[("cloud.region", "us")]), &single),
            None
        );
        let by_zone = RegionSettings {
            home_attribute: "zone".into(),
            ..regions
        };
        assert_eq!(home_region(&attrs(&[("zone", "eu")]), &by_zone), Some("eu"));
    }
}
