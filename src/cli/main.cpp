#include <cstdio>
#include "moe/core/error.h"
int main() { return 0; }
