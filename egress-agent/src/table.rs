//! The CLI's text tables (comfy-table): borderless, one space between columns, each column at
//! least as wide as its layout says and wider when a value needs it.
//!
//! The rows are the same typed structs that `--json` serialises; a table only turns their
//! fields into cells.

use comfy_table::{CellAlignment, ColumnConstraint, Table, TableStyle, Width};

/// A column: its title, its least width and its alignment.
#[derive(Clone, Copy, Debug)]
pub struct Col {
    pub title: &'static str,
    pub width: u16,
    pub right: bool,
}

/// A left-aligned column.
pub const fn left(title: &'static str, width: u16) -> Col {
    Col {
        title,
        width,
        right: false,
    }
}

/// A right-aligned column (numbers).
pub const fn right(title: &'static str, width: u16) -> Col {
    Col {
        title,
        width,
        right: true,
    }
}

/// Renders `rows` (one cell per column) under a header line; every line ends with a newline and
/// has no trailing spaces.
pub fn render<R: IntoIterator<Item = Vec<String>>>(cols: &[Col], rows: R) -> String {
    render_with_notes(cols, rows.into_iter().map(|r| (r, Vec::new())))
}

/// Like [`render`], with free-form lines (`notes`) under each row.
pub fn render_with_notes<R>(cols: &[Col], rows: R) -> String
where
    R: IntoIterator<Item = (Vec<String>, Vec<String>)>,
{
    let mut t = Table::new();
    t.load_style(TableStyle::new())
        .set_header(cols.iter().map(|c| c.title));
    let mut notes = Vec::new();
    for (row, n) in rows {
        t.add_row(row);
        notes.push(n);
    }
    let last = cols.len().saturating_sub(1);
    for (i, (col, spec)) in t.column_iter_mut().zip(cols).enumerate() {
        // The space between columns is the right padding of the one on the left.
        let pad = u16::from(i != last);
        col.set_padding((0, pad));
        col.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
            spec.width + pad,
        )));
        col.set_cell_alignment(if spec.right {
            CellAlignment::Right
        } else {
            CellAlignment::Left
        });
    }
    // One line per row: no cell holds a newline and nothing is wrapped.
    let mut out = String::new();
    for (i, line) in t.lines().enumerate() {
        out.push_str(line.trim_end());
        out.push('\n');
        for n in i
            .checked_sub(1)
            .and_then(|r| notes.get(r))
            .into_iter()
            .flatten()
        {
            out.push_str(n);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_their_width_and_grow_for_long_values() {
        let cols = [left("NAME", 6), right("N", 3), left("NOTE", 4)];
        let out = render(
            &cols,
            [
                vec!["a".into(), "1".into(), "".into()],
                vec!["longer-name".into(), "22".into(), "x".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME          N NOTE\n\
             a             1\n\
             longer-name  22 x\n"
        );
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        assert_eq!(render(&[left("A", 3), right("B", 2)], []), "A    B\n");
    }
}
