//! "Did you mean ...?": the candidates closest to a misspelt name.

/// The candidates closest to `wrong`, best first, at most `max`.
///
/// A candidate qualifies when its Damerau–Levenshtein distance to `wrong` is at most
/// a quarter of the shorter name's length (at least 1), or when it shares a long prefix
/// with it (Jaro–Winkler similarity ≥ 0.88, which catches `disj` → `disjoint`).
/// A namespaced candidate (`tall::consensus`) is also compared by its last segment,
/// so `consensos` finds it. Case is ignored.
pub(crate) fn closest<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Vec<String> {
    let wrong_lc = wrong.to_lowercase();
    let mut scored: Vec<(usize, u64, String)> = Vec::new();
    for cand in candidates {
        if cand == wrong || scored.iter().any(|(_, _, c)| c == cand) {
            continue;
        }
        let cand_lc = cand.to_lowercase();
        let short = cand_lc.rsplit("::").next().unwrap_or(&cand_lc);
        let mut best: Option<(usize, f64)> = None;
        for form in [cand_lc.as_str(), short] {
            let dist = strsim::damerau_levenshtein(&wrong_lc, form);
            let jw = strsim::jaro_winkler(&wrong_lc, form);
            let limit = (wrong_lc.chars().count().min(form.chars().count()) / 4).max(1);
            if dist <= limit || jw >= 0.88 {
                let better = match best {
                    None => true,
                    Some((d, j)) => dist < d || (dist == d && jw > j),
                };
                if better {
                    best = Some((dist, jw));
                }
            }
        }
        if let Some((dist, jw)) = best {
            // Sort by distance, then by similarity (descending, as an integer key).
            let key = ((1.0 - jw) * 1e9) as u64;
            scored.push((dist, key, cand.to_string()));
        }
    }
    scored.sort();
    scored.into_iter().take(max).map(|(_, _, c)| c).collect()
}

/// `did you mean `a`?` / `did you mean `a`, `b` or `c`?`, or `None` without candidates.
pub(crate) fn did_you_mean(found: &[String]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let quoted: Vec<String> = found.iter().map(|c| format!("`{c}`")).collect();
    Some(format!("did you mean {}?", crate::parser::or_list(&quoted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "trim",
        "topk",
        "dare",
        "elect",
        "disjoint",
        "sum",
        "task_arithmetic",
        "mean",
        "fisher",
        "scale",
        "ties",
        "tall::consensus",
    ];

    fn near(w: &str) -> Vec<String> {
        closest(w, NAMES.iter().copied(), 3)
    }

    #[test]
    fn finds_typos() {
        assert_eq!(near("elct")[0], "elect");
        assert_eq!(near("disjiont")[0], "disjoint");
        assert_eq!(near("disj")[0], "disjoint");
        assert_eq!(near("mena")[0], "mean");
        assert_eq!(near("TRIM")[0], "trim");
        assert_eq!(near("consensos")[0], "tall::consensus");
        assert!(near("tie").contains(&"ties".to_string()));
    }

    #[test]
    fn ignores_unrelated() {
        assert!(near("average").is_empty());
        assert!(near("zzzzzz").is_empty());
    }

    #[test]
    fn at_most_max() {
        assert!(closest("a", ["b", "c", "d", "e"], 3).len() <= 3);
    }
}
