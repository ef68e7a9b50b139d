//! A program is the set of source files a compilation sees: the standard
//! library as a prelude, then the user's files. A user's item may replace a
//! prelude item of the same name, explicitly and only for the user: names in
//! user files (and names the command line asks for) find the user's item,
//! while the prelude's own references keep finding the prelude's, so a user
//! file defining `adam` never changes the standard library's `adamw`
//! (which uses `adam`). [`Program::replaced_in`] lists such replacements so
//! tools can say so. A user item may not take a built-in's name (`sqrt`):
//! calls would never reach it. The program owns the sources (for
//! diagnostics) and the parsed items.

use std::collections::HashMap;

use optc_grammar::ast::{self, ItemBody};
use optc_grammar::{Diagnostic, FileId};

use crate::ir::{Rule, ScalarExpr};
use crate::lower;
use crate::objective::Objective;

#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Where a file comes from: the prelude's items can be shadowed by the user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Prelude,
    User,
}

#[derive(Clone, Debug, Default)]
pub struct Program {
    files: Vec<SourceFile>,
    asts: Vec<ast::File>,
    origins: Vec<Origin>,
    /// Visible items by name: (file index, item index).
    items: HashMap<String, (usize, usize)>,
    /// The prelude's items by name, which prelude files see.
    prelude: HashMap<String, (usize, usize)>,
}

/// Largest source the compiler reads; larger input is refused up front.
pub const MAX_SOURCE_BYTES: usize = 64 << 20;

impl Program {
    pub fn new() -> Program {
        Program::default()
    }

    /// Adds a file: checks it is UTF-8, parses it and makes its items visible.
    /// On error the file is still kept (so diagnostics can show it), but none
    /// of its items are added.
    pub fn add_source(
        &mut self,
        name: &str,
        bytes: &[u8],
        origin: Origin,
    ) -> Result<FileId, Diagnostic> {
        let id = FileId(self.files.len() as u32);
        let (text, utf8_error) = match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), None),
            Err(error) => (String::from_utf8_lossy(bytes).into_owned(), Some(error)),
        };
        self.files.push(SourceFile {
            name: name.to_string(),
            text,
        });
        self.asts.push(ast::File { items: Vec::new() });
        self.origins.push(origin);
        if bytes.len() > MAX_SOURCE_BYTES {
            return Err(Diagnostic::whole_file(format!(
                "{name}: file is too large ({} bytes; the limit is {MAX_SOURCE_BYTES})",
                bytes.len()
            )));
        }
        if let Some(error) = utf8_error {
            let offset = error.valid_up_to();
            let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(Diagnostic::whole_file(format!(
                "{name}: not valid UTF-8 (invalid byte at offset {offset}, line {line})"
            ))
            .with_hint(".opt sources are UTF-8 text"));
        }
        let file = optc_grammar::parse(&self.files[id.0 as usize].text, id)?;
        if file.items.is_empty() && origin == Origin::User {
            return Err(Diagnostic::whole_file(format!("{name}: no optimizer or function in this file"))
                .with_hint("an .opt file holds items: `optimizer NAME(hyper = default, ...) { ... }`, `fn NAME(...) { ... }` or `objective NAME(...) { ... }`"));
        }
        let mut seen: HashMap<&str, &ast::Item> = HashMap::new();
        for item in &file.items {
            if let Some(first) = seen.insert(&item.name.name, item) {
                return Err(Diagnostic::error(
                    format!("`{}` is defined twice in this file", item.name.name),
                    item.name.span,
                    "second definition",
                )
                .with_label(first.name.span, "first definition"));
            }
        }
        if origin == Origin::User {
            if let Some(item) = file
                .items
                .iter()
                .find(|item| !crate::builtins::arities(&item.name.name).is_empty())
            {
                return Err(Diagnostic::error(
                    format!("`{}` is a built-in function", item.name.name),
                    item.name.span,
                    "calls to this name reach the built-in",
                )
                .with_hint("choose another name"));
            }
        }
        for (index, item) in file.items.iter().enumerate() {
            let shadowed = self
                .items
                .get(&item.name.name)
                .is_some_and(|&(f, _)| self.origins[f] == Origin::User);
            if origin == Origin::User && shadowed {
                let (f, i) = self.items[&item.name.name];
                return Err(Diagnostic::error(
                    format!("`{}` is defined in two files", item.name.name),
                    item.name.span,
                    "defined here",
                )
                .with_label(self.asts[f].items[i].name.span, "and here"));
            }
            self.items
                .insert(item.name.name.clone(), (id.0 as usize, index));
            if origin == Origin::Prelude {
                self.prelude
                    .insert(item.name.name.clone(), (id.0 as usize, index));
            }
        }
        self.asts[id.0 as usize] = file;
        Ok(id)
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The visible item of that name (the user's, where it replaces the
    /// prelude's).
    pub fn item(&self, name: &str) -> Option<&ast::Item> {
        self.items.get(name).map(|&(f, i)| &self.asts[f].items[i])
    }

    /// The item that the name `name`, written in file `from`, refers to:
    /// the prelude's own item for a reference inside the prelude.
    pub fn item_from(&self, name: &str, from: FileId) -> Option<&ast::Item> {
        let in_prelude = self.origins.get(from.0 as usize) == Some(&Origin::Prelude);
        let found = if in_prelude {
            self.prelude.get(name).or_else(|| self.items.get(name))
        } else {
            self.items.get(name)
        };
        found.map(|&(f, i)| &self.asts[f].items[i])
    }

    /// The prelude items that items of `file` replace, in source order.
    pub fn replaced_in(&self, file: FileId) -> Vec<&str> {
        self.asts[file.0 as usize]
            .items
            .iter()
            .map(|item| item.name.name.as_str())
            .filter(|name| self.prelude.contains_key(*name))
            .collect()
    }

    /// Names of the optimizers defined in one file, in source order.
    pub fn optimizers_in(&self, file: FileId) -> Vec<&str> {
        self.asts[file.0 as usize]
            .items
            .iter()
            .filter(|item| matches!(item.body, ItemBody::Optimizer(_)))
            .map(|item| item.name.name.as_str())
            .collect()
    }

    /// Names of every item defined in one file, in source order.
    pub fn items_in(&self, file: FileId) -> Vec<&str> {
        self.asts[file.0 as usize]
            .items
            .iter()
            .map(|item| item.name.name.as_str())
            .collect()
    }

    /// Names of the objectives defined in one file, in source order.
    pub fn objectives_in(&self, file: FileId) -> Vec<&str> {
        self.asts[file.0 as usize]
            .items
            .iter()
            .filter(|item| matches!(item.body, ItemBody::Objective(_)))
            .map(|item| item.name.name.as_str())
            .collect()
    }

    /// Names of every visible objective, sorted.
    pub fn objectives(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .items
            .iter()
            .filter(|(_, &(f, i))| matches!(self.asts[f].items[i].body, ItemBody::Objective(_)))
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Names of every visible item: optimizers, functions and objectives.
    pub fn item_names(&self) -> impl Iterator<Item = &str> {
        self.items.keys().map(String::as_str)
    }

    /// Names of every visible optimizer, sorted.
    pub fn optimizers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .items
            .iter()
            .filter(|(_, &(f, i))| matches!(self.asts[f].items[i].body, ItemBody::Optimizer(_)))
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Compiles the optimizer `name` to its typed IR.
    pub fn compile(&self, name: &str) -> Result<Rule, Diagnostic> {
        lower::rule(self, name)
    }

    /// Compiles the objective `name`: its loss and symbolic gradients.
    pub fn compile_objective(&self, name: &str) -> Result<Objective, Diagnostic> {
        lower::objective(self, name)
    }

    /// Checks every item defined in `file` (functions on their own, see
    /// [`lower::function`]), collecting one diagnostic per failing item.
    pub fn check_file(&self, file: FileId) -> Vec<Diagnostic> {
        let functions = self.asts[file.0 as usize]
            .items
            .iter()
            .filter_map(|item| lower::function(self, item).err());
        let objectives = self
            .objectives_in(file)
            .into_iter()
            .filter_map(|name| self.compile_objective(name).err());
        functions
            .chain(self.check(&self.optimizers_in(file)))
            .chain(objectives)
            .collect()
    }

    /// Compiles each named optimizer, collecting one diagnostic per failure.
    pub fn check(&self, names: &[&str]) -> Vec<Diagnostic> {
        names
            .iter()
            .filter_map(|name| self.compile(name).err())
            .collect()
    }

    /// Compiles a lone scalar expression of `t` (a hyperparameter value given on
    /// a command line, a schedule call). The text becomes a source of its own.
    pub fn compile_scalar(&mut self, name: &str, text: &str) -> Result<ScalarExpr, Diagnostic> {
        let id = FileId(self.files.len() as u32);
        self.files.push(SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        });
        self.asts.push(ast::File { items: Vec::new() });
        self.origins.push(Origin::User);
        let expr = optc_grammar::parse_expr(text, id)?;
        lower::scalar(self, &expr, text, &lower::Earlier::new())
    }
}
