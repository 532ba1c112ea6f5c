# Goldens from the official M+ code: for each fixture and scenario, mplus-probe runs the scenario
# and mplus-compare-golden checks every golden tensor (tests/fixtures/tiny-mplus/README.md).
add_executable(mplus-compare-golden ${CMAKE_CURRENT_LIST_DIR}/compare_golden.cc)
target_link_libraries(mplus-compare-golden PRIVATE mplus_engine mplus_warnings)

foreach(fixture tiny-mplus tiny-mplus-bf16)
  if(fixture STREQUAL "tiny-mplus")
    set(tolerance 1e-4)
  else()
    set(tolerance 2e-2)
  endif()
  foreach(n 1 2 3 4)
    set(name golden.${fixture}.scenario-${n})
    add_test(NAME ${name}
      COMMAND ${CMAKE_COMMAND}
        -DPROBE=$<TARGET_FILE:mplus-probe>
        -DCOMPARE=$<TARGET_FILE:mplus-compare-golden>
        -DSCENARIO=${MPLUS_FIXTURES_DIR}/${fixture}/scenario-${n}.json
        -DGOLDEN=${MPLUS_FIXTURES_DIR}/${fixture}/golden-${n}.safetensors
        -DOUT=${CMAKE_CURRENT_BINARY_DIR}/golden/${fixture}-${n}.safetensors
        -DTOLERANCE=${tolerance}
        -P ${CMAKE_CURRENT_LIST_DIR}/run_golden.cmake)
    set_tests_properties(${name} PROPERTIES LABELS golden TIMEOUT 300)
  endforeach()
endforeach()
