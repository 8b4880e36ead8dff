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

impl PatientFields {
    /// Field-level control of writes and searches: the first of these fields (written
    /// by a create or update, or tested by a search) that `view` does not contain, by
    /// its FHIR name. A role writes and searches only what it may read.
    pub fn first_outside(self, view: PatientFields) -> Option<&'static str> {
        [
            (self.mrn, view.mrn, "identifier (MRN)"),
            (self.ssn, view.ssn, "identifier (SSN)"),
            (self.name, view.name, "name"),
            (self.birth_date, view.birth_date, "birthDate"),
            (self.gender, view.gender, "gender"),
            (self.telecom, view.telecom, "telecom"),
            (self.address, view.address, "address"),
        ]
        .into_iter()
        .find(|(used, allowed, _)| *used && !*allowed)
        .map(|(_, _, name)| name)
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

    const ALL_VIEWS: [View; 7] = [
        View::PatientClinical,
        View::PatientBilling,
        View::PatientSelf,
        View::PatientDemographics,
        View::ObservationFull,
        View::DocumentReferenceFull,
        View::ClaimFull,
    ];

    fn one(i: usize) -> PatientFields {
        let mut f = PatientFields::default();
        let slot = match i {
            0 => &mut f.mrn,
            1 => &mut f.ssn,
            2 => &mut f.name,
            3 => &mut f.birth_date,
            4 => &mut f.gender,
            5 => &mut f.telecom,
            _ => &mut f.address,
        };
        *slot = true;
        f
    }

    #[test]
    fn every_view_writes_and_searches_exactly_the_fields_it_reads() {
        for view in ALL_VIEWS {
            let fields = patient_fields(view);
            // Its own fields are always allowed; nothing is never refused.
            assert_eq!(fields.first_outside(fields), None, "{view:?}");
            assert_eq!(PatientFields::default().first_outside(fields), None);
            for i in 0..7 {
                let used = one(i);
                let inside = used.intersect(fields) == used;
                assert_eq!(
                    used.first_outside(fields).is_none(),
                    inside,
                    "{view:?} field {i}"
                );
            }
        }
        // The reported case: the clinical and service views may not write or search the SSN.
        let ssn = one(1);
        for view in [
            View::PatientClinical,
            View::PatientDemographics,
            View::PatientSelf,
        ] {
            assert_eq!(
                ssn.first_outside(patient_fields(view)),
                Some("identifier (SSN)")
            );
        }
        assert_eq!(
            ssn.first_outside(patient_fields(View::PatientBilling)),
            None
        );
    }

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
