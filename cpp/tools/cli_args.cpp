namespace tova {}
