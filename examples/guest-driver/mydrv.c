// mydrv: a minimal PCI driver for the emulated doorbell device (specs/default.json):
// binds to 1b36:0005, maps BAR0 and logs the doorbell block's MAGIC and VERSION.
#include <linux/module.h>
#include <linux/pci.h>

static int mydrv_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	void __iomem *bar;
	int err = pcim_enable_device(pdev);

	if (err)
		return err;
	bar = pcim_iomap(pdev, 0, 0);
	if (!bar)
		return -ENOMEM;
	dev_info(&pdev->dev, "mydrv: MAGIC 0x%08x VERSION 0x%08x\n", ioread32(bar), ioread32(bar + 4));
	return 0;
}

static const struct pci_device_id mydrv_ids[] = {
	{ PCI_DEVICE(0x1b36, 0x0005) },
	{ }
};
MODULE_DEVICE_TABLE(pci, mydrv_ids);

static struct pci_driver mydrv = {
	.name = "mydrv",
	.id_table = mydrv_ids,
	.probe = mydrv_probe,
};
module_pci_driver(mydrv);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("example driver for the vfu doorbell device");
