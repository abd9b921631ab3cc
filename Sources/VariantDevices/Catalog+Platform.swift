extension VariantCatalog {
    /// IGD, NVLink2, Grace and the capability-only variants.
    static var platformVariants: [any VariantDriver] {
        [IGDDriver(), NVLink2GPUDriver(), NVLink2NPUDriver(), NVGraceDriver()]
    }
}
