// DeviceSpecs
