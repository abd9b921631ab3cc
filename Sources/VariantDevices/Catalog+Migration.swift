extension VariantCatalog {
    /// Migration-capable variants.
    static var migrationVariants: [any VariantDriver] { [MigratableVFDriver()] }
}
