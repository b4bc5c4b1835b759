//! Small helpers for the simulator's checkout and the demo shop, which write plain HTML.

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `R 50.00` for 5000 ZAR.
pub fn money(amount: i64, currency: &str) -> String {
    let symbol = match currency {
        "ZAR" => "R ",
        "USD" => "$",
        other => other,
    };
    format!("{symbol}{}.{:02}", amount / 100, amount % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_money_formatted() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(money(5000, "ZAR"), "R 50.00");
        assert_eq!(money(1095, "USD"), "$10.95");
        assert_eq!(money(7, "ZAR"), "R 0.07");
    }
}
