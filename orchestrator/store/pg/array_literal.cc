#include "orchestrator/store/pg/array_literal.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saga::store::pg {

void ArrayLiteral::StartElement() {
  if (size_ > 0) text_.push_back(',');
  ++size_;
}

void ArrayLiteral::Add(std::string_view element) {
  StartElement();
  text_.reserve(text_.size() + element.size() + 2);
  text_.push_back('"');
  for (char c : element) {
    if (c == '"' || c == '\\') {
      text_.push_back('\\');
    } else if (c == '\0') {
      has_nul_ = true;
    }
    text_.push_back(c);
  }
  text_.push_back('"');
}

void ArrayLiteral::Add(int64_t element) {
  StartElement();
  absl::StrAppend(&text_, element);
}

void ArrayLiteral::AddBool(bool element) {
  StartElement();
  text_.push_back(element ? 't' : 'f');
}

void ArrayLiteral::AddNull() {
  StartElement();
  text_.append("NULL");
}

void ArrayLiteral::AddOptional(const std::optional<std::string>& element) {
  if (element.has_value()) {
    Add(std::string_view(*element));
  } else {
    AddNull();
  }
}

absl::StatusOr<std::string> ArrayLiteral::Build() const {
  if (has_nul_) {
    return absl::InvalidArgumentError("text contains a NUL byte, which PostgreSQL cannot store");
  }
  return absl::StrCat(text_, "}");
}

absl::StatusOr<std::string> EncodeArrayLiteral(const std::vector<std::optional<std::string>>& v) {
  ArrayLiteral literal;
  for (const auto& element : v) literal.AddOptional(element);
  return literal.Build();
}

}  // namespace saga::store::pg
