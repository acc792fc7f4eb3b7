# rules/rules.mk -- sources of librules.a (sync rules and write rules; a leaf library)
RULES_SRCS +=
