//! hugetlb: each hugepage limit -> hugetlb.<pagesize>.max (a hard limit).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Hugetlb;

impl Controller for Hugetlb {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let mut out = Vec::new();
        for h in res.hugepage_limits().iter().flatten() {
            let size = h.page_size();
            let valid = size.len() > 2
                && size.ends_with("B")
                && size[..size.len() - 2].chars().all(|c| c.is_ascii_digit())
                && matches!(&size[size.len() - 2..], "KB" | "MB" | "GB");
            if !valid {
                return Err(CgroupError::invalid(
                    "hugepageLimits.pageSize",
                    format!("{size:?} is not a page size like \"2MB\" or \"1GB\""),
                ));
            }
            if h.limit() < 0 {
                return Err(CgroupError::invalid("hugepageLimits.limit", format!("{} is negative", h.limit())));
            }
            out.push(Setting::limit(
                format!("hugetlb.{size}.max"),
                h.limit().to_string(),
                format!("hugetlb {size} limit ({} bytes)", h.limit()),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxHugepageLimitBuilder, LinuxResourcesBuilder};

    #[test]
    fn page_sizes_map_to_their_files() {
        let h = |s: &str| LinuxHugepageLimitBuilder::default().page_size(s).limit(4194304i64).build().unwrap();
        let r = LinuxResourcesBuilder::default().hugepage_limits(vec![h("2MB")]).build().unwrap();
        let p = Hugetlb::plan(&r, Path::new("/x")).unwrap();
        assert_eq!((p[0].file.as_str(), p[0].value.as_str()), ("hugetlb.2MB.max", "4194304"));
        let r = LinuxResourcesBuilder::default().hugepage_limits(vec![h("../2MB")]).build().unwrap();
        assert!(Hugetlb::plan(&r, Path::new("/x")).unwrap_err().to_string().contains("pageSize"));
    }
}
