//! FHIR wire types at the edge: OperationOutcome, the `$import` Parameters and the export manifest.
pub mod bulk_submit;
pub mod manifest;
pub mod operation_outcome;
pub mod parameters;
