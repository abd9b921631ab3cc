print("vfu")
