# frozen_string_literal: true

module TaskerCore
  # The gem's version (the tasker-core workspace version).
  VERSION = "0.1.0"
end
