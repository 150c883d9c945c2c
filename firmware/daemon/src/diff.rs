//! A small line diff (longest common subsequence) for `config diff`: the inputs are redacted
//! canonical TOML, a few thousand lines at most.

/// Lines only in `a` start with `-`, lines only in `b` with `+`; unchanged lines are left out
/// except one line of context before each change.
pub fn lines(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    let mut last_same: Option<&str> = None;
    let ctx = |out: &mut String, last: &mut Option<&str>| {
        if let Some(l) = last.take() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    };
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            last_same = Some(a[i]);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ctx(&mut out, &mut last_same);
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            ctx(&mut out, &mut last_same);
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    if out.is_empty() {
        out.push_str("no changes\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn shows_changes_with_context() {
        let d = super::lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n+ B\n- b\n  c\n+ d\n");
        assert_eq!(super::lines("x\n", "x\n"), "no changes\n");
    }
}
