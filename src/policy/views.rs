//! View → fields, for every resource, in one place: what each named [`View`] of the
//! decision point lets its holder see. Fields outside the view are never fetched,
//! serialised, written or erased for that holder.

use super::{ResourceType, View};

/// The Patient fields a view may see (the id, version, facility and timestamps are part
/// of every view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatientFields {
    pub mrn: bool,
    pub ssn: bool,
    pub name: bool,
    pub birth_date: bool,
    pub gender: bool,
    pub telecom: bool,
    pub address: bool,
}

impl PatientFields {
    pub fn intersect(self, other: PatientFields) -> PatientFields {
        PatientFields {
            mrn: self.mrn && other.mrn,
            ssn: self.ssn && other.ssn,
            name: self.name && other.name,
            birth_date: self.birth_date && other.birth_date,
            gender: self.gender && other.gender,
            telecom: self.telecom && other.telecom,
            address: self.address && other.address,
        }
    }
}

/// The Patient fields of `view`; a view of another resource sees none.
pub fn patient_fields(view: View) -> PatientFields {
    let demographics = PatientFields {
        mrn: true,
        name: true,
        birth_date: true,
        gender: true,
        ..PatientFields::default()
    };
    match view {
        View::PatientClinical | View::PatientSelf => PatientFields {
            telecom: true,
            address: true,
            ..demographics
        },
        View::PatientBilling => PatientFields {
            ssn: true,
            address: true,
            ..demographics
        },
        View::PatientDemographics => demographics,
        View::ObservationFull | View::DocumentReferenceFull | View::ClaimFull => {
            PatientFields::default()
        }
    }
}

/// Observation, DocumentReference and Claim have one view each: the whole resource.
/// Is `view` that view of `resource`? (Patient has several; see [`patient_fields`].)
pub fn is_whole_view(resource: ResourceType, view: View) -> bool {
    matches!(
        (resource, view),
        (ResourceType::Observation, View::ObservationFull)
            | (ResourceType::DocumentReference, View::DocumentReferenceFull)
            | (ResourceType::Claim, View::ClaimFull)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_billing_sees_the_ssn_and_only_patient_views_see_patient_fields() {
        for view in [
            View::PatientClinical,
            View::PatientSelf,
            View::PatientDemographics,
        ] {
            assert!(!patient_fields(view).ssn, "{view:?}");
            assert!(patient_fields(view).mrn, "{view:?}");
        }
        assert!(patient_fields(View::PatientBilling).ssn);
        for view in [
            View::ObservationFull,
            View::DocumentReferenceFull,
            View::ClaimFull,
        ] {
            assert_eq!(patient_fields(view), PatientFields::default());
        }
        assert!(is_whole_view(ResourceType::Claim, View::ClaimFull));
        assert!(!is_whole_view(ResourceType::Claim, View::ObservationFull));
        assert!(!is_whole_view(ResourceType::Patient, View::PatientClinical));
    }
}
