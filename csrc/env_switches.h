// Comparison switches read from the environment (FIBSPARSE_HOPPER and the
// like): each lets a benchmark or a test turn one kernel choice off without a
// rebuild. A value the switch does not know is refused, so that a misspelt
// setting fails at once instead of silently measuring the default.
#pragma once

#include <initializer_list>

namespace fibsparse {

// The setting of switch `name`: null when unset, else one of `allowed`; any
// other value raises an error naming the variable, what it got and what it
// takes. Read on every call it could steer, so that tests can change it.
const char* switch_setting(const char* name, std::initializer_list<const char*> allowed);

// Whether an on/off switch (values "0" and "1") is set to "0".
bool switched_off(const char* name);

// FIBSPARSE_POISON_OUTPUTS=1: every output, and every buffer one backward pass
// writes for the next, is filled with NaN before the kernels run, so a test
// can prove that each element read was written (read per call so tests can
// switch it).
bool poison_outputs();

}  // namespace fibsparse
