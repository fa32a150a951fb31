//! Reading a Prometheus text page (`/metrics` of an admin listener) in tests.

/// The samples of `name` on the page `text`: (labels as written, `{…}` or empty; value).
pub fn series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // another metric whose name begins with this one
            }
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of `name`'s samples on `text`; `None` when it has none.
pub fn total(text: &str, name: &str) -> Option<f64> {
    let s = series(text, name);
    (!s.is_empty()).then(|| s.iter().map(|(_, v)| v).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_name_with_their_labels_and_summed() {
        let page = "# TYPE a_total counter\na_total{g=\"x\"} 2\na_total{g=\"y\"} 3.5\n\
                    a_total_more 9\nb 1\n";
        assert_eq!(
            series(page, "a_total"),
            vec![("{g=\"x\"}".to_owned(), 2.0), ("{g=\"y\"}".to_owned(), 3.5)]
        );
        assert_eq!(total(page, "a_total"), Some(5.5));
        assert_eq!(total(page, "b"), Some(1.0));
        assert_eq!(total(page, "c"), None);
    }
}
