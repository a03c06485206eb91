//! Test doubles of Azure Key Vault and Microsoft Azure Attestation (being built).
