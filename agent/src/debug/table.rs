//! Output of the debug commands: aligned tables for people, JSON for programs.

use std::io::Write as _;

use clap::ValueEnum;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON (field names are documented in docs/DEBUG.md).
    Json,
}

/// Rows under named columns; as JSON, an array of objects keyed by the column names.
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Aligned text: a header in capitals, then the rows.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|column| column.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = String>| {
            let mut text = String::new();
            for (index, cell) in cells.enumerate() {
                if index + 1 == widths.len() {
                    text.push_str(&cell);
                } else {
                    let pad = widths[index].saturating_sub(cell.chars().count());
                    text.push_str(&cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            text.trim_end().to_owned() + "\n"
        };
        let mut out = line(&mut self.columns.iter().map(|column| column.to_uppercase()));
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().cloned()));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        self.columns
                            .iter()
                            .zip(row)
                            .map(|(column, cell)| {
                                (
                                    (*column).to_owned(),
                                    serde_json::Value::String(cell.clone()),
                                )
                            })
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error worth a message.
pub fn print(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text);
    Ok(())
}
