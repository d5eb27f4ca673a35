//! The Linux list format for sets of CPUs and nodes ("0-3,8,10-11"), as sysfs prints it in
//! `cpulist`, `nodelist`, `online` and `has_memory` files: parsing, and formatting for
//! [`Topology`](crate::Topology)'s `Display`.

use std::fmt::Write as _;
use std::path::Path;

use crate::NumaError;

/// Largest index accepted in a list. Linux caps CPUs at 8192 and nodes at 1024; this bound, and
/// merging ranges before expanding them, keep a hostile "0-4000000000" (or "0-1048576" repeated
/// thousands of times) from allocating gigabytes: a list holds at most `MAX_INDEX + 1` indices.
pub(crate) const MAX_INDEX: u32 = 1 << 20;

/// Parses a list in Linux list format: comma-separated items, each a single index (`8`) or an
/// inclusive range (`0-3`).
///
/// Surrounding whitespace (sysfs ends its files with a newline) is ignored, and an empty list
/// gives an empty vector. The result is sorted with no duplicates.
///
/// # Errors
///
/// [`NumaError::InvalidCpuList`] for reversed ranges, empty items, signs, indices above 2^20 or
/// anything else that is not a list of indices and ranges.
///
/// ```
/// assert_eq!(tera_numa::parse_cpu_list("0-3,8,10-11\n").unwrap(), [0, 1, 2, 3, 8, 10, 11]);
/// assert!(tera_numa::parse_cpu_list("").unwrap().is_empty());
/// assert!(tera_numa::parse_cpu_list("3-1").is_err());
/// ```
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, NumaError> {
    let input = s.trim();
    let invalid = |reason| NumaError::InvalidCpuList {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Ok(Vec::new());
    }
    // Ranges first, expanded only once merged, so that the output never holds more than
    // MAX_INDEX + 1 indices however often the input repeats a range.
    let mut ranges = Vec::new();
    for item in input.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(invalid("empty item between commas"));
        }
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_index(a, &invalid)?, parse_index(b, &invalid)?),
            None => {
                let i = parse_index(item, &invalid)?;
                (i, i)
            }
        };
        if first > last {
            return Err(invalid("range runs backwards"));
        }
        ranges.push((first, last));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        // Sorted by start, so a range overlapping or touching the previous one extends it.
        if let Some(previous) = merged.last_mut() {
            if first <= previous.1.saturating_add(1) {
                previous.1 = previous.1.max(last);
                continue;
            }
        }
        merged.push((first, last));
    }
    let len: usize = merged
        .iter()
        .map(|&(first, last)| (last - first) as usize + 1)
        .sum();
    let mut out = Vec::with_capacity(len);
    for (first, last) in merged {
        out.extend(first..=last);
    }
    Ok(out)
}

/// Reads and parses a file in Linux list format, such as `/sys/devices/system/cpu/online`. The
/// error is a sentence for the log, naming the file.
pub(crate) fn read_cpu_list(path: &Path) -> Result<Vec<u32>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_cpu_list(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_index(text: &str, invalid: &impl Fn(&'static str) -> NumaError) -> Result<u32, NumaError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("expected numbers like 0-3,8"));
    }
    match text.parse::<u32>() {
        Ok(i) if i <= MAX_INDEX => Ok(i),
        _ => Err(invalid("index too large")),
    }
}

/// Formats sorted indices in Linux list format, folding runs into ranges: `[0,1,2,3,8]` gives
/// `"0-3,8"`, an empty slice gives `""`.
pub(crate) fn format_cpu_list(indices: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = indices[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = if start == end {
            write!(out, "{start}")
        } else {
            write!(out, "{start}-{end}")
        };
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_singles() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5").unwrap(), [5]);
        assert_eq!(parse_cpu_list("7-7").unwrap(), [7]);
        assert_eq!(parse_cpu_list(" 2 , 0 - 1 \n").unwrap(), [0, 1, 2]);
    }

    #[test]
    fn unsorted_and_overlapping_items_are_sorted_and_deduplicated() {
        assert_eq!(parse_cpu_list("8,0-2,1,2-3").unwrap(), [0, 1, 2, 3, 8]);
    }

    #[test]
    fn touching_and_nested_ranges_are_merged() {
        assert_eq!(
            parse_cpu_list("20-21,0-10,2-3,11,21-22,30").unwrap(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 30]
        );
        assert_eq!(parse_cpu_list("4,4,4-4").unwrap(), [4]);
        assert_eq!(
            parse_cpu_list(&format!("{MAX_INDEX},0,{MAX_INDEX}")).unwrap(),
            [0, MAX_INDEX]
        );
    }

    #[test]
    fn repeated_huge_ranges_are_merged_before_expanding() {
        // About 20 KB of input naming 2000 times every index up to the bound: expanding each
        // item before deduplicating would allocate 8 GB.
        let input = format!("0-{MAX_INDEX},").repeat(2000);
        let input = input.trim_end_matches(',');
        let list = parse_cpu_list(input).unwrap();
        let expected = MAX_INDEX as usize + 1;
        assert_eq!(list.len(), expected);
        assert_eq!(list.first(), Some(&0));
        assert_eq!(list.last(), Some(&MAX_INDEX));
        assert!(list.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(list.capacity() <= 2 * expected, "{}", list.capacity());
    }

    #[test]
    fn reads_a_list_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0,2-3\n").unwrap();
        assert_eq!(read_cpu_list(&path).unwrap(), [0, 2, 3]);
        std::fs::write(&path, "two\n").unwrap();
        let err = read_cpu_list(&path).unwrap_err();
        assert!(
            err.contains("online") && err.contains("invalid CPU list"),
            "{err}"
        );
        let err = read_cpu_list(&dir.path().join("absent")).unwrap_err();
        assert!(err.starts_with("cannot read "), "{err}");
    }

    #[test]
    fn empty_list_is_empty() {
        assert!(parse_cpu_list("").unwrap().is_empty());
        assert!(parse_cpu_list("\n").unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            "a",
            "1,,2",
            ",1",
            "1,",
            "3-1",
            "-1",
            "1-",
            "-",
            "1-2-3",
            "+1",
            "0x1",
            "1.5",
            "99999999999",
            "0-4000000000",
            "1 2",
        ] {
            match parse_cpu_list(bad) {
                Err(NumaError::InvalidCpuList { input, reason }) => {
                    assert_eq!(input, bad.trim(), "input kept for {bad:?}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_names_the_input() {
        let message = parse_cpu_list("3-1").unwrap_err().to_string();
        assert!(message.contains("\"3-1\""), "{message}");
        assert!(message.contains("backwards"), "{message}");
    }

    #[test]
    fn format_folds_runs() {
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(format_cpu_list(&[4]), "4");
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8]), "0-3,8");
        assert_eq!(format_cpu_list(&[0, 2, 4, 5]), "0,2,4-5");
        assert_eq!(
            format_cpu_list(&[u32::MAX - 1, u32::MAX]),
            "4294967294-4294967295"
        );
    }

    #[test]
    fn format_then_parse_round_trips() {
        for list in [
            vec![],
            vec![0],
            vec![0, 1, 2, 3, 8, 10, 11],
            vec![1, 3, 5, 6, 7, 100],
        ] {
            assert_eq!(parse_cpu_list(&format_cpu_list(&list)).unwrap(), list);
        }
    }
}
