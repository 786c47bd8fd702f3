//! [`ast::Pipeline`] → [`Pipeline`]: resolve names, bind and check arguments, expand
//! `ties(...)`, and check that the types flow from `Stack` to `Delta`.

use crate::ast::{self, Value};
use crate::error::{ErrorKind, LangError};
use crate::parser::or_list;
use crate::pipeline::{Arg, ArgValue, Call, Pipeline, Span};
use crate::spec::{Catalog, DefaultValue, Lookup, OpSpec, ParamKind, ParamSpec, Signature, Ty};
use crate::sugar::TIES_NAME;
use crate::suggest::{closest, did_you_mean};

/// How many names a "did you mean" or "e.g." list shows at most.
const MAX_SUGGESTIONS: usize = 3;

/// An operator name resolved through the catalog.
pub(crate) struct Resolved {
    pub(crate) qualified: String,
    pub(crate) spec: &'static OpSpec,
}

/// Checks a syntax tree against a catalog; errors point into `source`.
pub(crate) struct Checker<'a> {
    pub(crate) source: &'a str,
    pub(crate) catalog: &'a dyn Catalog,
}

/// A stage already seen, for "the models were combined by ..." notes.
#[derive(Clone)]
struct Seen {
    name: String,
    span: Span,
}

/// The type flowing between stages, and where it changed.
struct Flow {
    ty: Ty,
    elected: Option<Seen>,
    combined: Option<Seen>,
}

/// The ordinal word for the zero-based position `i`: `first`, `second`, ...
pub(crate) fn ordinal(i: usize) -> String {
    const WORDS: [&str; 10] = [
        "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
        "tenth",
    ];
    match WORDS.get(i) {
        Some(w) => (*w).to_string(),
        None => {
            let n = i + 1;
            let suffix = match (n % 10, n % 100) {
                (1, r) if r != 11 => "st",
                (2, r) if r != 12 => "nd",
                (3, r) if r != 13 => "rd",
                _ => "th",
            };
            format!("{n}{suffix}")
        }
    }
}

/// How a type is called in messages.
pub(crate) fn ty_phrase(ty: Ty) -> &'static str {
    match ty {
        Ty::Stack => "the stack of task vectors (Stack)",
        Ty::Voted => "an elected sign (Voted)",
        Ty::Delta => "a merged delta (Delta)",
    }
}

/// `` `a` ``, `` `a` or `b` ``, ... for a list of names.
pub(crate) fn quoted_or(names: &[String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    or_list(&q)
}

impl Checker<'_> {
    /// An error of `kind` at `span` of the source.
    pub(crate) fn error(
        &self,
        kind: ErrorKind,
        span: Span,
        message: impl Into<String>,
    ) -> LangError {
        LangError::new(kind, self.source, span, message)
    }

    /// Checks a whole parsed pipeline.
    pub(crate) fn pipeline(&self, ast: &ast::Pipeline) -> Result<Pipeline, LangError> {
        let mut flow = Flow {
            ty: Ty::Stack,
            elected: None,
            combined: None,
        };
        let mut stages = Vec::new();
        for stage in &ast.stages {
            let resolved = self.resolve(&stage.name, false)?;
            let signature = if resolved.qualified == TIES_NAME {
                let parts = self.expand_ties(stage)?;
                let signature = self.flow_step(&flow, stage, resolved.spec)?;
                stages.extend(parts);
                signature
            } else {
                let args = self.bind(&stage.name.text, resolved.spec, stage.args(), stage.span)?;
                let signature = self.flow_step(&flow, stage, resolved.spec)?;
                stages.push(Call {
                    op: resolved.qualified,
                    spec: resolved.spec,
                    signature,
                    args,
                    span: stage.span,
                });
                signature
            };
            let seen = Seen {
                name: stage.name.text.clone(),
                span: stage.span,
            };
            if signature.output == Ty::Voted && signature.input != Ty::Voted {
                flow.elected = Some(seen.clone());
            }
            if signature.output == Ty::Delta && signature.input != Ty::Delta {
                flow.combined = Some(seen);
            }
            flow.ty = signature.output;
        }
        if flow.ty != Ty::Delta {
            let last = ast.stages.last().expect("a parsed pipeline has a stage");
            return Err(self.unfinished(&flow, last));
        }
        Ok(Pipeline { stages })
    }

    /// Looks `name` up in the catalog. `value_hint`: the name was written where a
    /// value could also go, so a forgotten `$` is a likely cause.
    pub(crate) fn resolve(
        &self,
        name: &ast::Name,
        value_hint: bool,
    ) -> Result<Resolved, LangError> {
        match self.catalog.lookup(&name.text) {
            Lookup::Found { qualified, spec } => Ok(Resolved { qualified, spec }),
            Lookup::Ambiguous(mut candidates) => {
                candidates.sort();
                Err(self
                    .error(
                        ErrorKind::AmbiguousOperator,
                        name.span,
                        format!("`{}` is ambiguous: several plugins define it", name.text),
                    )
                    .with_label("ambiguous operator")
                    .with_help(format!("write one of {}", quoted_or(&candidates))))
            }
            Lookup::NotFound => {
                let names = self.catalog.names();
                let near = closest(
                    &name.text,
                    names.iter().map(String::as_str),
                    MAX_SUGGESTIONS,
                );
                if let Some((ns, _)) = name.text.split_once("::") {
                    let prefix = format!("{ns}::");
                    if !names.iter().any(|n| n.starts_with(&prefix)) {
                        return Err(self
                            .error(
                                ErrorKind::UnknownOperator,
                                name.span,
                                format!(
                                    "unknown operator `{}`: no plugin `{ns}` is loaded",
                                    name.text
                                ),
                            )
                            .with_label("an operator of a plugin that is not loaded")
                            .with_help(format!(
                                "load the plugin `{ns}` with --plugin PATH, the recipe's \
                                 `plugins:` list, or a folder in REEFKNOT_PLUGIN_PATH \
                                 (`reefknot ops` lists the operators loaded)"
                            )));
                    }
                }
                let mut lines: Vec<String> = Vec::new();
                if value_hint && !name.text.contains("::") {
                    lines.push(format!("if `{0}` is a variable, write `${0}`", name.text));
                }
                lines.push(
                    did_you_mean(&near)
                        .unwrap_or_else(|| "`reefknot ops` lists the available operators".into()),
                );
                let help = lines.join("\n");
                Err(self
                    .error(
                        ErrorKind::UnknownOperator,
                        name.span,
                        format!("unknown operator `{}`", name.text),
                    )
                    .with_label("not an operator")
                    .with_help(help))
            }
        }
    }

    /// Operators (canonical names, built-ins before plugin ones, in catalog order)
    /// that can be used as `from → to`.
    pub(crate) fn ops_with(&self, from: Ty, to: Ty) -> Vec<String> {
        let wanted = Signature::new(from, to);
        let mut plain = Vec::new();
        let mut plugin = Vec::new();
        for name in self.catalog.names() {
            if let Lookup::Found { qualified, spec } = self.catalog.lookup(&name) {
                if spec.signatures.contains(&wanted)
                    && !plain.contains(&qualified)
                    && !plugin.contains(&qualified)
                {
                    if qualified.contains("::") {
                        plugin.push(qualified);
                    } else {
                        plain.push(qualified);
                    }
                }
            }
        }
        plain.extend(plugin);
        plain
    }

    /// `e.g. `a`, `b` or `c``, from the catalog's operators of that signature.
    fn examples(&self, from: Ty, to: Ty) -> Option<String> {
        let mut ops = self.ops_with(from, to);
        if ops.is_empty() {
            return None;
        }
        ops.truncate(MAX_SUGGESTIONS);
        Some(quoted_or(&ops))
    }

    /// The signature `stage` uses for the type flowing in, or the error saying why it
    /// does not fit and what to do.
    fn flow_step(
        &self,
        flow: &Flow,
        stage: &ast::Stage,
        spec: &OpSpec,
    ) -> Result<Signature, LangError> {
        if let Some(sig) = spec.signature_for(flow.ty) {
            return Ok(sig);
        }
        let name = &stage.name.text;
        let mut inputs: Vec<Ty> = spec.signatures.iter().map(|s| s.input).collect();
        inputs.sort();
        inputs.dedup();
        let needs: Vec<String> = inputs.iter().map(|t| ty_phrase(*t).to_string()).collect();
        let message = format!(
            "`{name}` needs {} but receives {}",
            or_list(&needs),
            ty_phrase(flow.ty)
        );
        let wants: Vec<&str> = inputs.iter().map(|t| t.name()).collect();
        let mut err = self
            .error(ErrorKind::StageMismatch, stage.span, message)
            .with_label(format!(
                "needs {}, receives {}",
                wants.join(" or "),
                flow.ty
            ));
        let help = match flow.ty {
            Ty::Stack => {
                if inputs.contains(&Ty::Voted) {
                    match self.examples(Ty::Stack, Ty::Voted) {
                        Some(ops) => format!(
                            "put {ops} before it: `{} |> {name}`",
                            self.ops_with(Ty::Stack, Ty::Voted)[0]
                        ),
                        None => "put a stage that elects a sign (Stack→Voted) before it".into(),
                    }
                } else {
                    let mut help = "combine the models before it".to_string();
                    if let Some(ops) = self.examples(Ty::Stack, Ty::Delta) {
                        help.push_str(&format!(", e.g. with {ops}"));
                    }
                    if let (Some(e), Some(d)) = (
                        self.ops_with(Ty::Stack, Ty::Voted).first(),
                        self.ops_with(Ty::Voted, Ty::Delta).first(),
                    ) {
                        help.push_str(&format!(", or with `{e} |> {d}`"));
                    }
                    help
                }
            }
            Ty::Voted => {
                let elect = flow
                    .elected
                    .as_ref()
                    .map_or("elect".to_string(), |s| s.name.clone());
                if let Some(s) = &flow.elected {
                    err = err.with_note_at(s.span, "sign elected here");
                }
                let mut help = match self.examples(Ty::Voted, Ty::Delta) {
                    Some(ops) => format!(
                        "after `{elect}`, combine the models along the elected sign with {ops}"
                    ),
                    None => format!(
                        "after `{elect}`, combine the models along the elected sign (Voted→Delta)"
                    ),
                };
                if inputs.contains(&Ty::Stack) {
                    help.push_str(&format!("; or move `{name}` before `{elect}`"));
                }
                help
            }
            Ty::Delta => {
                let combiner = flow
                    .combined
                    .as_ref()
                    .map_or("an earlier stage".to_string(), |s| format!("`{}`", s.name));
                if let Some(s) = &flow.combined {
                    err = err.with_note_at(s.span, "models combined here");
                }
                let elect = self.ops_with(Ty::Stack, Ty::Voted);
                if !inputs.contains(&Ty::Stack) && inputs.contains(&Ty::Voted) && !elect.is_empty()
                {
                    format!(
                        "the models were already combined by {combiner}; to combine them with \
                         `{name}` instead, use `{} |> {name}` in place of {combiner}",
                        elect[0]
                    )
                } else {
                    let mut help = format!(
                        "the models were already combined by {combiner}: move `{name}` before \
                         {combiner}, while the task vectors are still separate"
                    );
                    if let Some(ops) = self.examples(Ty::Delta, Ty::Delta) {
                        help.push_str(&format!(
                            "; after {combiner}, only stages that take a Delta can follow \
                             (e.g. {ops})"
                        ));
                    }
                    help
                }
            }
        };
        Err(err.with_help(help))
    }

    /// The error for a pipeline that does not end with a Delta.
    fn unfinished(&self, flow: &Flow, last: &ast::Stage) -> LangError {
        let err = self
            .error(
                ErrorKind::UnfinishedPipeline,
                last.span,
                format!(
                    "the pipeline ends with {} but must end with one merged delta (Delta)",
                    ty_phrase(flow.ty)
                ),
            )
            .with_label(format!("the pipeline ends here, with {}", flow.ty));
        let help = match flow.ty {
            Ty::Voted => {
                let options: Vec<String> = self
                    .ops_with(Ty::Voted, Ty::Delta)
                    .into_iter()
                    .take(MAX_SUGGESTIONS)
                    .map(|o| format!("`|> {o}`"))
                    .collect();
                if options.is_empty() {
                    "add a stage that combines the models along the elected sign (Voted→Delta)"
                        .into()
                } else {
                    format!(
                        "add a stage that combines the models along the elected sign: {}",
                        or_list(&options)
                    )
                }
            }
            _ => {
                let mut options: Vec<String> = self
                    .ops_with(Ty::Stack, Ty::Delta)
                    .into_iter()
                    .take(MAX_SUGGESTIONS)
                    .map(|o| format!("`|> {o}`"))
                    .collect();
                if let (Some(e), Some(d)) = (
                    self.ops_with(Ty::Stack, Ty::Voted).first(),
                    self.ops_with(Ty::Voted, Ty::Delta).first(),
                ) {
                    options.push(format!("`|> {e} |> {d}`"));
                }
                if options.is_empty() {
                    "add a stage that combines the models (Stack→Delta)".into()
                } else {
                    format!(
                        "add a stage that combines the models: {}",
                        or_list(&options)
                    )
                }
            }
        };
        err.with_help(help)
    }

    /// `parameters of `dare`: p, a number in [0, 1) (default 0.9); ...`.
    pub(crate) fn params_help(op: &str, spec: &OpSpec) -> String {
        if spec.params.is_empty() {
            return format!("`{op}` takes no arguments");
        }
        let list: Vec<String> = spec
            .params
            .iter()
            .map(|p| {
                let default = match p.default {
                    Some(d) => format!("default {d}"),
                    None => "required".into(),
                };
                format!("{}, {} ({default})", p.name, p.kind.describe())
            })
            .collect();
        format!("parameters of `{op}`: {}", list.join("; "))
    }

    /// Binds `args` to the parameters of `spec` (positional, then named), checks every
    /// value and fills the defaults.
    pub(crate) fn bind(
        &self,
        op: &str,
        spec: &'static OpSpec,
        args: &[ast::Arg],
        stage_span: Span,
    ) -> Result<Vec<Arg>, LangError> {
        let params = spec.params;
        let mut slots: Vec<Option<(ArgValue, Span, Span)>> = vec![None; params.len()];
        for (i, arg) in args.iter().enumerate() {
            let idx = match &arg.name {
                None => {
                    if i >= params.len() {
                        let message = if params.is_empty() {
                            format!("`{op}` takes no arguments")
                        } else {
                            format!(
                                "`{op}` takes at most {} argument{}, found a {}",
                                params.len(),
                                if params.len() == 1 { "" } else { "s" },
                                ordinal(i)
                            )
                        };
                        let help = if params.is_empty() {
                            format!("remove the arguments: `{op}`")
                        } else {
                            Self::params_help(op, spec)
                        };
                        return Err(self
                            .error(ErrorKind::TooManyArguments, arg.span, message)
                            .with_label("unexpected argument")
                            .with_help(help));
                    }
                    i
                }
                Some(name) => match params.iter().position(|p| p.name == name.text) {
                    Some(idx) => idx,
                    None => {
                        let near =
                            closest(&name.text, params.iter().map(|p| p.name), MAX_SUGGESTIONS);
                        let mut help = Self::params_help(op, spec);
                        if let Some(dym) = did_you_mean(&near) {
                            help = format!("{dym}\n{help}");
                        }
                        return Err(self
                            .error(
                                ErrorKind::UnknownParameter,
                                name.span,
                                format!("`{op}` has no parameter `{}`", name.text),
                            )
                            .with_label("unknown parameter")
                            .with_help(help));
                    }
                },
            };
            let param = &params[idx];
            if let Some((_, first_span, _)) = &slots[idx] {
                return Err(self
                    .error(
                        ErrorKind::DuplicateArgument,
                        arg.span,
                        format!("`{}` of `{op}` is given twice", param.name),
                    )
                    .with_label(format!("second value for `{}`", param.name))
                    .with_note_at(*first_span, format!("`{}` is first given here", param.name))
                    .with_help(format!("give `{}` once", param.name)));
            }
            let value = self.value(op, param, &arg.value)?;
            slots[idx] = Some((value, arg.span, arg.value.span()));
        }
        params
            .iter()
            .zip(slots)
            .map(|(param, slot)| match slot {
                Some((value, _, value_span)) => Ok(Arg {
                    param,
                    value,
                    span: Some(value_span),
                }),
                None => self.default_arg(op, spec, param, stage_span),
            })
            .collect()
    }

    /// The default of `param`, or the error for a missing required parameter.
    pub(crate) fn default_arg(
        &self,
        op: &str,
        spec: &OpSpec,
        param: &'static ParamSpec,
        stage_span: Span,
    ) -> Result<Arg, LangError> {
        let value = match param.default {
            Some(DefaultValue::Number(x)) => ArgValue::Number(x),
            Some(DefaultValue::Choice(c)) => ArgValue::Choice(c),
            Some(DefaultValue::Bool(b)) => ArgValue::Bool(b),
            Some(DefaultValue::Text(t)) => ArgValue::Text(t.to_string()),
            None => {
                return Err(self
                    .error(
                        ErrorKind::MissingArgument,
                        stage_span,
                        format!("`{op}` needs a value for `{}`", param.name),
                    )
                    .with_label(format!("`{}` is missing", param.name))
                    .with_help(format!(
                        "add `{}=...` to its arguments; {}",
                        param.name,
                        Self::params_help(op, spec)
                    )))
            }
        };
        Ok(Arg {
            param,
            value,
            span: None,
        })
    }

    /// Describes a written value for "found ..." messages.
    pub(crate) fn what(&self, value: &Value) -> String {
        let text = |s: Span| &self.source[s.start..s.end];
        match value {
            Value::Number(n) => format!("the number `{}`", text(n.span)),
            Value::Str { span, .. } => format!("the string `{}`", text(*span)),
            Value::Name(n) => format!("the name `{}`", n.text),
            Value::Var { name, .. } => format!("the variable `${name}`"),
            Value::Gradient { .. } => "a list of numbers".into(),
            Value::Stage(s) => format!("the operator call `{}(...)`", s.name.text),
        }
    }

    /// Checks one value against its parameter.
    pub(crate) fn value(
        &self,
        op: &str,
        param: &'static ParamSpec,
        value: &Value,
    ) -> Result<ArgValue, LangError> {
        let mismatch = |help: Option<String>| {
            let mut e = self
                .error(
                    ErrorKind::ArgumentType,
                    value.span(),
                    format!(
                        "`{}` of `{op}` expects {}, found {}",
                        param.name,
                        param.kind.describe(),
                        self.what(value)
                    ),
                )
                .with_label(format!("expected {}", param.kind.describe()));
            if let Some(h) = help {
                e = e.with_help(h);
            }
            e
        };
        match (param.kind, value) {
            (ParamKind::Number { .. }, Value::Number(n)) => {
                self.in_range(op, param, n)?;
                Ok(ArgValue::Number(n.value))
            }
            (ParamKind::Number { .. }, Value::Var { name, .. }) => Ok(ArgValue::Var(name.clone())),
            (ParamKind::Number { .. }, Value::Gradient { items, span }) => {
                if items.len() < 2 {
                    return Err(self
                        .error(
                            ErrorKind::ShortGradient,
                            *span,
                            "a gradient needs at least two numbers",
                        )
                        .with_label("only one number")
                        .with_help(format!(
                            "write a single value without brackets (`{}`), or give the values \
                             at the first and last layer, e.g. `[0.1, 0.5]`",
                            &self.source[items[0].span.start..items[0].span.end]
                        )));
                }
                for n in items {
                    self.in_range(op, param, n)?;
                }
                Ok(ArgValue::Gradient(items.iter().map(|n| n.value).collect()))
            }
            (ParamKind::Number { .. }, Value::Name(n)) if !n.text.contains("::") => Err(mismatch(
                Some(format!("to read the variable `{0}`, write `${0}`", n.text)),
            )),
            (ParamKind::Number { .. }, Value::Str { value: s, .. })
                if s.trim().parse::<f64>().is_ok() =>
            {
                Err(mismatch(Some("write the number without quotes".into())))
            }
            (ParamKind::Choice(options), Value::Name(n)) => {
                match options.iter().find(|o| **o == n.text) {
                    Some(o) => Ok(ArgValue::Choice(o)),
                    None => {
                        let near = closest(&n.text, options.iter().copied(), MAX_SUGGESTIONS);
                        let mut help = format!("`{}` is {}", param.name, param.kind.describe());
                        if let Some(dym) = did_you_mean(&near) {
                            help = format!("{dym}\n{help}");
                        }
                        Err(self
                            .error(
                                ErrorKind::UnknownChoice,
                                n.span,
                                format!(
                                    "`{}` is not an option of `{}` of `{op}`",
                                    n.text, param.name
                                ),
                            )
                            .with_label("unknown option")
                            .with_help(help))
                    }
                }
            }
            (ParamKind::Choice(options), Value::Str { value: s, .. })
                if options.contains(&s.as_str()) =>
            {
                Err(mismatch(Some(format!("write it without quotes: `{s}`"))))
            }
            (ParamKind::Choice(options), Value::Stage(s))
                if s.args().is_empty() && options.contains(&s.name.text.as_str()) =>
            {
                Err(mismatch(Some(format!(
                    "write it without parentheses: `{}`",
                    s.name.text
                ))))
            }
            (ParamKind::Bool, Value::Name(n)) => match n.text.as_str() {
                "true" => Ok(ArgValue::Bool(true)),
                "false" => Ok(ArgValue::Bool(false)),
                _ => Err(mismatch(None)),
            },
            (ParamKind::Bool, Value::Number(n)) if n.value == 0.0 || n.value == 1.0 => {
                Err(mismatch(Some(format!(
                    "write `{}`",
                    if n.value == 1.0 { "true" } else { "false" }
                ))))
            }
            (ParamKind::Text, Value::Str { value: s, .. }) => Ok(ArgValue::Text(s.clone())),
            (ParamKind::Text, Value::Name(n)) => Err(mismatch(Some(format!(
                "write it in double quotes: `\"{}\"`",
                n.text
            )))),
            (_, Value::Var { .. }) => Err(mismatch(Some(
                "a `$variable` can only give the value of a number parameter".into(),
            ))),
            (_, Value::Gradient { .. }) => Err(mismatch(Some(
                "a list of numbers (a gradient over depth) can only give the value of a number \
                 parameter"
                    .into(),
            ))),
            (_, Value::Stage(_)) => Err(mismatch(Some(
                "an operator call can only be an argument of `ties(...)`; chain stages with `|>`"
                    .into(),
            ))),
            _ => Err(mismatch(None)),
        }
    }

    /// Checks that a literal lies in the range of a number parameter.
    fn in_range(&self, op: &str, param: &ParamSpec, n: &ast::Number) -> Result<(), LangError> {
        if param.kind.admits(n.value) {
            return Ok(());
        }
        let text = &self.source[n.span.start..n.span.end];
        let mut help = format!("`{}` of `{op}` takes {}", param.name, param.kind.describe());
        if !param.doc.is_empty() {
            help.push_str(&format!(": {}", param.doc));
        }
        let range = param.kind.describe();
        let range = range.strip_prefix("a number in ").unwrap_or(&range);
        Err(self
            .error(
                ErrorKind::OutOfRange,
                n.span,
                format!("`{text}` is out of range for `{}` of `{op}`", param.name),
            )
            .with_label(format!("not in {range}"))
            .with_help(help))
    }
}
