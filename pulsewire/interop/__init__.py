"""Pulsewire's data in other people's vocabularies: HL7 FHIR for clinics, COVESA VSS for vehicles.

`records` reads one device's rows for one audience; `fhir` and `vss` turn them into documents.
Scoping (which devices a caller may export) is the caller's job: the dashboard checks it first.
"""
