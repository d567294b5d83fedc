#include "env_switches.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace fibsparse {

const char* switch_setting(const char* name, std::initializer_list<const char*> allowed) {
  const char* setting = std::getenv(name);
  if (setting == nullptr) return nullptr;
  std::string choices;
  for (const char* value : allowed) {
    if (std::strcmp(setting, value) == 0) return setting;
    choices += (choices.empty() ? "" : ", ") + std::string(value);
  }
  TORCH_CHECK(false, "fibsparse: ", name, " must be one of ", choices, " (or unset), got '", setting, "'");
}

bool switched_off(const char* name) {
  const char* setting = switch_setting(name, {"0", "1"});
  return setting != nullptr && std::strcmp(setting, "0") == 0;
}

bool poison_outputs() {
  const char* flag = std::getenv("FIBSPARSE_POISON_OUTPUTS");
  return flag != nullptr && flag[0] == '1';
}

}  // namespace fibsparse
