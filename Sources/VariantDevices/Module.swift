// VariantDevices
