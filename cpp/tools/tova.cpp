#include <cstdio>
int main() { std::puts("tova 0.1.0"); return 0; }
