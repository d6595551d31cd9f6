//! Node-wide chunk cache (owned by the fetch/cache owner). See the issue text for the contract.
