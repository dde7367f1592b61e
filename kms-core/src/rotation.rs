//! Two-step rotation of a key that KMS plugins serve to kube-apiservers.
//!
//! A rotation first *stages* the new material version ([`KeyMetadata::stage_rotation`]):
//! it is listed in the key's record, every plugin loads it and can decrypt under it, but
//! every plugin still encrypts under the current version. The version is *promoted*
//! (made current, [`KeyMetadata::promote`]) only once every plugin that serves the key
//! reports holding it. So a plugin cut off from the API servers never meets a ciphertext
//! under a version it does not know: while it is cut off, no plugin encrypts under the new
//! version at all.
//!
//! Every plugin with a heartbeat counts, live or not: a plugin whose heartbeat stopped may
//! be cut off while still serving its kube-apiserver. Its heartbeat record is what holds
//! the promotion; deleting it (the plugin's Lease) lets the promotion go on. A key no
//! plugin serves is promoted at once. Pure: the reports are passed in.

use crate::key::KeyMetadata;

/// What one plugin serving the key reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The plugin instance.
    pub plugin: &'a str,
    /// Whether its heartbeat was renewed within its duration (by the reader's clock).
    pub live: bool,
    /// The versions of this key it holds (loaded, able to decrypt under).
    pub holds: &'a [u32],
}

/// A plugin the promotion waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    /// The plugin instance.
    pub plugin: String,
    /// Whether its heartbeat is live (false: cut off from the API servers, or stopped).
    pub live: bool,
    /// The newest version of the key it reports holding, if any.
    pub newest_held: Option<u32>,
}

/// What to do about a key's staged versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promotion {
    /// Make this version current (the newest staged version every plugin holds).
    pub promote_to: Option<u32>,
    /// The newest version, still staged after `promote_to`, and the plugins that do not
    /// hold it yet.
    pub waiting: Option<(u32, Vec<Awaited>)>,
}

/// Decides the promotion of `metadata`'s staged versions, given every plugin with a
/// heartbeat that serves the key (`holders`; empty: the key is not served).
#[must_use]
pub fn decide(metadata: &KeyMetadata, holders: &[Holder<'_>]) -> Promotion {
    let staged: Vec<u32> = metadata.staged_versions().collect();
    let Some(&newest) = staged.last() else {
        return Promotion::default();
    };
    let held_by_all = |version: u32| holders.iter().all(|h| h.holds.contains(&version));
    let promote_to = staged.iter().rev().copied().find(|v| held_by_all(*v));
    let waiting = (promote_to != Some(newest)).then(|| {
        let awaited = holders
            .iter()
            .filter(|h| !h.holds.contains(&newest))
            .map(|h| Awaited {
                plugin: h.plugin.to_owned(),
                live: h.live,
                newest_held: h.holds.iter().copied().max(),
            })
            .collect();
        (newest, awaited)
    });
    Promotion {
        promote_to,
        waiting,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::OffsetDateTime;
    use time::macros::datetime;

    use super::*;
    use crate::{KeyId, KeySpec, KeyUsage, Origin, RotationType};

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn fresh_key() -> KeyMetadata {
        KeyMetadata::new(
            KeyId::single_from_random([7; 16]),
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Origin::AwsKms,
            T0,
        )
        .expect("metadata")
    }

    fn holder<'a>(plugin: &'a str, live: bool, holds: &'a [u32]) -> Holder<'a> {
        Holder {
            plugin,
            live,
            holds,
        }
    }

    #[test]
    fn a_staged_version_is_listed_but_not_current() {
        let mut key = fresh_key();
        let version = key
            .stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        assert_eq!(version, 2);
        assert_eq!(key.current_version(), Some(1));
        assert_eq!(key.staged_versions().collect::<Vec<_>>(), vec![2]);
        assert_eq!(key.on_demand_rotations, 1);
        key.promote(2).expect("promote");
        assert_eq!(key.current_version(), Some(2));
        assert_eq!(key.staged_versions().count(), 0);
        assert!(
            key.promote(1).is_err(),
            "the current version never moves back"
        );
        assert!(key.promote(3).is_err(), "an unlisted version");
        // A one-step rotation of a pinned key makes its new version current.
        key.record_rotation(T0, RotationType::OnDemand)
            .expect("rotate");
        assert_eq!(key.current_version(), Some(3));
    }

    #[test]
    fn a_plugin_without_the_version_holds_it_back_live_or_not() {
        let mut key = fresh_key();
        key.stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        for live in [true, false] {
            let decided = decide(
                &key,
                &[holder("h1", true, &[1, 2]), holder("h2", live, &[1])],
            );
            assert_eq!(decided.promote_to, None);
            assert_eq!(
                decided.waiting,
                Some((
                    2,
                    vec![Awaited {
                        plugin: "h2".to_owned(),
                        live,
                        newest_held: Some(1)
                    }]
                ))
            );
        }
        let all = decide(
            &key,
            &[holder("h1", true, &[1, 2]), holder("h2", false, &[1, 2])],
        );
        assert_eq!(
            all,
            Promotion {
                promote_to: Some(2),
                waiting: None
            }
        );
        // h2's Lease deleted: only h1 is left.
        assert_eq!(
            decide(&key, &[holder("h1", true, &[1, 2])]).promote_to,
            Some(2)
        );
    }

    #[test]
    fn a_key_no_plugin_serves_is_promoted_at_once() {
        let mut key = fresh_key();
        key.stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        key.stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        assert_eq!(
            decide(&key, &[]),
            Promotion {
                promote_to: Some(3),
                waiting: None
            }
        );
    }

    #[test]
    fn the_newest_version_every_plugin_holds_is_promoted_while_the_rest_wait() {
        let mut key = fresh_key();
        key.stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        key.stage_rotation(T0, RotationType::OnDemand)
            .expect("stage");
        let decided = decide(
            &key,
            &[holder("h1", true, &[1, 2, 3]), holder("h2", true, &[1, 2])],
        );
        assert_eq!(decided.promote_to, Some(2));
        assert_eq!(decided.waiting.map(|(v, w)| (v, w.len())), Some((3, 1)));
        assert_eq!(
            decide(&fresh_key(), &[holder("h1", true, &[1])]),
            Promotion::default()
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Stage,
        Rotate,
        /// Each plugin loads up to this many versions of the key.
        Load(Vec<u8>),
        Decide,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Stage),
            Just(Step::Rotate),
            prop::collection::vec(0u8..30, 0..4).prop_map(Step::Load),
            Just(Step::Decide),
        ]
    }

    proptest! {
        /// Whatever the plugins report, the current version never moves back and is
        /// always a version every plugin holds (or the one it was), and once every plugin
        /// holds every version, nothing stays staged.
        #[test]
        fn promotion_never_outruns_a_plugin(steps in prop::collection::vec(step(), 1..40)) {
            let mut key = fresh_key();
            let mut loaded: Vec<u32> = vec![1, 1, 1];
            for step in steps {
                let before = key.current_version();
                match step {
                    Step::Stage => { let _ = key.stage_rotation(T0, RotationType::OnDemand); }
                    Step::Rotate => {
                        if key.record_rotation(T0, RotationType::OnDemand).is_ok() {
                            // A one-step rotation is for keys no plugin serves.
                            let newest = key.versions.last().map_or(1, |v| v.version);
                            loaded.iter_mut().for_each(|l| *l = newest);
                        }
                    }
                    Step::Load(upto) => {
                        let newest = key.versions.last().map_or(1, |v| v.version);
                        for (l, u) in loaded.iter_mut().zip(upto) {
                            *l = (*l).max(u32::from(u).min(newest));
                        }
                    }
                    Step::Decide => {
                        let holds: Vec<Vec<u32>> = loaded.iter().map(|l| (1..=*l).collect()).collect();
                        let holders: Vec<Holder<'_>> = holds
                            .iter()
                            .map(|h| holder("p", true, h))
                            .collect();
                        let decided = decide(&key, &holders);
                        if let Some(v) = decided.promote_to {
                            prop_assert!(loaded.iter().all(|l| *l >= v));
                            key.promote(v).expect("promotable");
                        }
                        let newest = key.versions.last().map_or(1, |v| v.version);
                        if loaded.iter().all(|l| *l >= newest) {
                            prop_assert_eq!(key.staged_versions().count(), 0);
                            prop_assert!(decided.waiting.is_none());
                        } else {
                            prop_assert!(decided.waiting.is_some());
                        }
                    }
                }
                prop_assert!(key.current_version() >= before);
                let current = key.current_version().unwrap_or(0);
                prop_assert!(key.versions.iter().any(|v| v.version == current));
            }
        }
    }
}
