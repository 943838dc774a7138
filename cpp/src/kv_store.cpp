// stub: filled in by its issue
namespace tova {}
