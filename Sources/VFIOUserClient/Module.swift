// VFIOUserClient
