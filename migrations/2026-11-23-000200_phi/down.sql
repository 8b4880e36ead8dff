DROP TABLE claim_items;
DROP TABLE claims;
DROP TABLE document_references;
DROP TABLE observations;
DROP TABLE patients;
DROP TABLE facilities;
