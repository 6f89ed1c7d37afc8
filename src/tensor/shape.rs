//! Shape arithmetic that never overflows or trusts a client's numbers.

/// Number of elements of a concrete shape. Rejects negative dimensions and
/// products that overflow.
pub fn element_count(shape: &[i64]) -> Result<usize, String> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| format!("shape {shape:?} has a negative dimension"))?;
        n.checked_mul(d).ok_or_else(|| format!("shape {shape:?} overflows the element count"))
    })
}

/// Whether a concrete shape fits a declared one (-1 matches any size).
pub fn shape_matches(declared: &[i64], actual: &[i64]) -> bool {
    declared.len() == actual.len() && declared.iter().zip(actual).all(|(&d, &a)| d < 0 || d == a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rejects() {
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(element_count(&[2, 0, 3]), Ok(0));
        assert!(element_count(&[-1, 3]).unwrap_err().contains("negative"));
        assert!(element_count(&[1 << 40, 1 << 40]).unwrap_err().contains("overflows"));
    }

    #[test]
    fn wildcard_dims_match() {
        assert!(shape_matches(&[-1, 3], &[7, 3]));
        assert!(!shape_matches(&[-1, 3], &[7, 4]));
        assert!(!shape_matches(&[3], &[1, 3]));
    }
}
