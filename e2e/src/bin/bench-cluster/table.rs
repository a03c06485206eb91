//! The `--rows` table: one tab-separated line a figure (section, figure, value, baseline, ratio),
//! echoed on stderr as it is written.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;

/// The rows one section of the table appends to the `--rows` file.
pub struct Section<'a> {
    rows: &'a Path,
    name: &'static str,
}

impl<'a> Section<'a> {
    /// Rows of the section `name`, appended to the file `rows`.
    pub fn new(rows: &'a Path, name: &'static str) -> Self {
        Self { rows, name }
    }

    /// Appends one figure; `base` and `ratio` are empty where the figure has no baseline.
    pub fn row(&self, figure: &str, value: &str, base: &str, ratio: &str) -> Result<()> {
        // Opened for each row so that the rows written stay in the file if a later step fails.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.rows)?;
        writeln!(f, "{}\t{figure}\t{value}\t{base}\t{ratio}", self.name)?;
        eprintln!("  {figure}: {value} (baseline {base}, ratio {ratio})");
        Ok(())
    }
}
