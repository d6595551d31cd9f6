//! What about the machine skews benchmark figures, for the benchmarks to print beside them.

/// The guest kernel's free page reporting (a virtio-balloon feature): freed guest memory is handed
/// back to the host, and the next touch of it faults on the host, which on the project's machines
/// costs ~9 CPU-s per GiB and slows the virtual disk with it (docs/PERFORMANCE.md has the figures).
///
/// `None` where the kernel has no page reporting; otherwise a line for a benchmark's header.
pub fn free_page_reporting() -> Option<String> {
    describe_reporting(&std::fs::read_to_string(PAGE_REPORTING_ORDER).ok()?)
}

/// What a `page_reporting_order` of `order` means: free blocks of that order and larger are
/// reported, and no block is larger than [`MAX_PAGE_ORDER`].
fn describe_reporting(order: &str) -> Option<String> {
    let order: u32 = order.trim().parse().ok()?;
    Some(if order == u32::MAX {
        // -1: no device has registered for page reporting.
        "off (no device reports free pages)".to_string()
    } else if order <= MAX_PAGE_ORDER {
        format!(
            "on (order {order}): freed memory goes back to the host and costs a fault when touched again, \
             so figures swing; `echo {} > {PAGE_REPORTING_ORDER}` turns it off",
            MAX_PAGE_ORDER + 1
        )
    } else {
        format!("off (order {order})")
    })
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// The largest buddy allocator order on x86-64 and arm64 with 4 KiB pages (4 MiB blocks).
const MAX_PAGE_ORDER: u32 = 10;

#[cfg(test)]
mod tests {
    use super::describe_reporting;

    #[test]
    fn reporting_is_on_up_to_the_largest_block_order_and_off_past_it() {
        assert!(describe_reporting("9\n").unwrap().starts_with("on (order 9)"));
        assert!(describe_reporting("10").unwrap().starts_with("on (order 10)"));
        assert_eq!(describe_reporting("11\n").unwrap(), "off (order 11)");
        assert_eq!(describe_reporting("4294967295\n").unwrap(), "off (no device reports free pages)");
        assert_eq!(describe_reporting("garbage"), None);
    }
}
