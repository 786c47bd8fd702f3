//! The three merges, as reefknot recipes and as equivalent mergekit configurations.
//!
//! | method | reefknot | mergekit 0.1.5 |
//! |---|---|---|
//! | TIES | `ties(trim(0.2), elect, disjoint)` | `ties`, `density: 0.2`, `weight: 1.0`, `normalize: true` (its default) |
//! | DARE-TIES | `dare(p=0.8, rescale=l1) \|> elect \|> disjoint` | `dare_ties`, `density: 0.2`, `weight: 1.0`, `rescale: true` (default), `normalize: true` |
//! | task arithmetic | `sum` | `task_arithmetic`, `weight: 1.0`, `lambda: 1.0` (default) |
//! | SLERP | `slerp(0.5)`, the base and `task_0` | `slerp`, models the base and `task_0`, `t: 0.5` |
//! | DELLA | `della(0.3, eps=0.15) \|> elect \|> disjoint` | `della`, `density: 0.3`, `epsilon: 0.15`, `weight: 1.0` (normalize and rescale: its defaults) |
//! | Model Stock | `model_stock` | `model_stock` |
//!
//! mergekit's `dare_ties` keeps each entry with probability `density` and rescales the
//! survivors to the task vector's L1 norm (`rescale: true`, `RescaleNorm.l1`): that is
//! `dare(p = 1 − density, rescale=l1)`. Its default `normalize` for `dare_ties` is
//! `false` (agreeing entries summed, `disjoint(sum)`); the benchmark sets
//! `normalize: true` to match `disjoint`, as the golden test `dare_ties_d1` does. The
//! two settings cost the same. Every config states `dtype` (the compute dtype). By
//! default it is `float32` with `out_dtype: bfloat16`: reefknot computes in float32, and
//! that is the configuration whose outputs equal reefknot's (the golden tests hold them
//! to it). `--mergekit-dtype bfloat16` measures mergekit computing in bfloat16 (what it
//! does when `dtype` is left out on bf16 inputs): faster, and other numbers.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A merge the benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// TIES with k = 0.2.
    Ties,
    /// DARE (p = 0.8, L1 rescaling) then TIES's election and disjoint mean.
    DareTies,
    /// The sum of the task vectors.
    TaskArithmetic,
    /// Spherical interpolation between the base and the first fine-tune, t = 0.5.
    Slerp,
    /// DELLA (k = 0.3, ε = 0.15, L1 rescaling) then TIES's election and disjoint mean.
    Della,
    /// Model Stock over every fine-tune.
    ModelStock,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 6] = [
        Method::Ties,
        Method::DareTies,
        Method::TaskArithmetic,
        Method::Slerp,
        Method::Della,
        Method::ModelStock,
    ];

    /// The identifier used in file names, `--only` and JSON.
    pub fn id(self) -> &'static str {
        match self {
            Method::Ties => "ties",
            Method::DareTies => "dare_ties",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Slerp => "slerp",
            Method::Della => "della",
            Method::ModelStock => "model_stock",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Method::Ties => "TIES",
            Method::DareTies => "DARE-TIES",
            Method::TaskArithmetic => "task arithmetic",
            Method::Slerp => "SLERP",
            Method::Della => "DELLA",
            Method::ModelStock => "Model Stock",
        }
    }

    /// Parses an `--only` entry (`ties`, `dare_ties`/`dare-ties`, `task_arithmetic`/`ta`...).
    pub fn parse(s: &str) -> Option<Method> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "ties" => Some(Method::Ties),
            "dare_ties" | "dare" => Some(Method::DareTies),
            "task_arithmetic" | "ta" | "sum" => Some(Method::TaskArithmetic),
            "slerp" => Some(Method::Slerp),
            "della" => Some(Method::Della),
            "model_stock" | "stock" => Some(Method::ModelStock),
            _ => None,
        }
    }

    /// The reefknot merge expression.
    pub fn expression(self) -> &'static str {
        match self {
            Method::Ties => "ties(trim(0.2), elect, disjoint)",
            Method::DareTies => "dare(p=0.8, rescale=l1) |> elect |> disjoint",
            Method::TaskArithmetic => "sum",
            Method::Slerp => "slerp(0.5)",
            Method::Della => "della(0.3, eps=0.15) |> elect |> disjoint",
            Method::ModelStock => "model_stock",
        }
    }

    /// The speed-up over mergekit an issue asks for, if one does.
    pub fn target_speedup(self) -> Option<f64> {
        match self {
            Method::Ties | Method::DareTies => Some(50.0),
            Method::TaskArithmetic => Some(15.0),
            Method::Slerp | Method::Della | Method::ModelStock => None,
        }
    }

    /// The fine-tunes the merge takes of those the family has (SLERP: the first).
    fn tasks(self, tasks: &[String]) -> &[String] {
        match self {
            Method::Slerp => &tasks[..tasks.len().min(1)],
            _ => tasks,
        }
    }

    /// A reefknot recipe; `base` and `tasks` are paths relative to the recipe's folder.
    pub fn recipe(self, base: &str, tasks: &[String]) -> String {
        let mut s = format!(
            "# written by reefknot-bench: {} (equivalent mergekit config in ../mergekit/)\nbase: {base}\nmodels:\n",
            self.label()
        );
        for t in self.tasks(tasks) {
            let _ = writeln!(s, "  - path: {t}");
        }
        let _ = writeln!(s, "merge: {}", self.expression());
        s.push_str("dtype: bfloat16\nseed: 0\n");
        s
    }

    /// The equivalent mergekit configuration; paths relative to its working directory.
    pub fn mergekit_config(self, base: &str, tasks: &[String], dtype: &str) -> String {
        let (name, model_params, shared) = match self {
            Method::Ties => ("ties", "{ weight: 1.0, density: 0.2 }", "normalize: true"),
            Method::DareTies => (
                "dare_ties",
                "{ weight: 1.0, density: 0.2 }",
                "normalize: true\n  rescale: true",
            ),
            Method::TaskArithmetic => ("task_arithmetic", "{ weight: 1.0 }", "lambda: 1.0"),
            Method::Slerp => ("slerp", "{}", "t: 0.5"),
            Method::Della => (
                "della",
                "{ weight: 1.0, density: 0.3, epsilon: 0.15 }",
                "normalize: true\n  rescale: true",
            ),
            Method::ModelStock => ("model_stock", "{}", "filter_wise: false"),
        };
        let mut s = format!(
            "# written by reefknot-bench: {} (reefknot: `{}`)\nmerge_method: {name}\nbase_model: {base}\nmodels:\n",
            self.label(),
            self.expression()
        );
        if self == Method::Slerp {
            // mergekit's slerp interpolates between two listed models, the base one of them.
            let _ = writeln!(s, "  - model: {base}");
        }
        for t in self.tasks(tasks) {
            let _ = writeln!(s, "  - model: {t}\n    parameters: {model_params}");
        }
        let _ = writeln!(s, "parameters:\n  {shared}\ndtype: {dtype}");
        if dtype != "bfloat16" {
            s.push_str("out_dtype: bfloat16\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_aliases() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.id()), Some(m));
        }
        assert_eq!(Method::parse("DARE-TIES"), Some(Method::DareTies));
        assert_eq!(
            Method::parse("task-arithmetic"),
            Some(Method::TaskArithmetic)
        );
        assert_eq!(Method::parse("slerp"), Some(Method::Slerp));
        assert_eq!(Method::parse("karcher"), None);
    }

    #[test]
    fn writes_recipes_and_configs() {
        let tasks = vec!["../f/task_0".to_string(), "../f/task_1".to_string()];
        let r = Method::DareTies.recipe("../f/base", &tasks);
        assert!(r.contains("base: ../f/base\n"));
        assert!(r.contains("  - path: ../f/task_1\n"));
        assert!(r.contains("merge: dare(p=0.8, rescale=l1) |> elect |> disjoint\n"));
        let c = Method::DareTies.mergekit_config("../f/base", &tasks, "bfloat16");
        assert!(c.contains("merge_method: dare_ties\n"));
        assert!(c.contains("density: 0.2"));
        assert!(c.contains("  rescale: true\n"));
        assert!(c.ends_with("dtype: bfloat16\n"));
        let c = Method::Ties.mergekit_config("../f/base", &tasks, "float32");
        assert!(c.ends_with("dtype: float32\nout_dtype: bfloat16\n"));
        // SLERP takes the base and one fine-tune.
        let r = Method::Slerp.recipe("../f/base", &tasks);
        assert!(r.contains("task_0") && !r.contains("task_1"), "{r}");
        let c = Method::Slerp.mergekit_config("../f/base", &tasks, "float32");
        assert!(
            c.contains("  - model: ../f/base\n  - model: ../f/task_0\n"),
            "{c}"
        );
        assert!(!c.contains("task_1") && c.contains("t: 0.5"), "{c}");
    }
}
