//! Printing helpers: JSON documents and CPC amounts.

use serde::Serialize;

/// Decimals of the CPC unit (amounts on the wire are in 10^-18 CPC).
pub(crate) const CPC_DECIMALS: u32 = 18;

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `1500000000000000000` → `1.5`.
pub(crate) fn format_cpc(base_units: u128) -> String {
    let unit = 10u128.pow(CPC_DECIMALS);
    let (whole, frac) = (base_units / unit, base_units % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:018}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// `1.5` → `1500000000000000000`: exact decimal CPC to base units.
pub(crate) fn parse_cpc(text: &str) -> anyhow::Result<u128> {
    let bad = || {
        anyhow::anyhow!("invalid amount `{text}`: expected a decimal CPC amount such as 10 or 0.25")
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > CPC_DECIMALS as usize {
        anyhow::bail!("invalid amount `{text}`: at most {CPC_DECIMALS} decimal places");
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac_units: u128 =
        if frac.is_empty() { 0 } else { format!("{frac:0<18}").parse().map_err(|_| bad())? };
    whole
        .checked_mul(10u128.pow(CPC_DECIMALS))
        .and_then(|w| w.checked_add(frac_units))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpc_amounts_round_trip_exactly() {
        assert_eq!(parse_cpc("1.5").expect("amount"), 1_500_000_000_000_000_000);
        assert_eq!(parse_cpc("0.000000000000000001").expect("amount"), 1);
        assert_eq!(parse_cpc("10").expect("amount"), 10_000_000_000_000_000_000);
        assert!(parse_cpc("1.2.3").is_err());
        assert!(parse_cpc("-1").is_err());
        assert!(parse_cpc("0.0000000000000000001").is_err());
        assert!(parse_cpc("").is_err());
        assert_eq!(format_cpc(1_500_000_000_000_000_000), "1.5");
        assert_eq!(format_cpc(7), "0.000000000000000007");
    }
}
